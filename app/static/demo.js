// The demo page: calls /answer and /batch from the browser. Model output is only ever put in the page as text
// (textContent), never as HTML. The API key, when given, lives in sessionStorage and goes out as X-API-Key.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "qa-ensemble.api-key";

function headers(extra) {
  const key = $("api-key").value.trim();
  return key ? { ...extra, "X-API-Key": key } : { ...extra };
}

// A fetch that returns parsed JSON, or throws an Error whose message names error_type and the message.
async function call(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new Error(`network_error: ${err.message}`);
  }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!response.ok) {
    if (body && body.error_type) {
      let message = `${response.status} ${body.error_type}: ${body.error}`;
      if (Array.isArray(body.detail)) {
        message += body.detail.map((d) => `\n  ${(d.loc || []).join(".")}: ${d.msg || ""}`).join("");
      }
      throw new Error(message);
    }
    throw new Error(`${response.status} ${response.statusText}: ${text.slice(0, 500)}`);
  }
  return { status: response.status, body };
}

function showError(box, err) {
  box.textContent = err ? err.message : "";
  box.hidden = !err;
}

function cell(row, value, numeric) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "—" : String(value);
  if (numeric) td.className = "num";
  row.appendChild(td);
}

const fixed = (x, digits) => (x === null || x === undefined ? null : Number(x).toFixed(digits));

function renderAnswer(body) {
  if (body.abstained) {
    const best = (body.clusters || [])[0];
    $("answer").textContent = `(abstained: confidence below the minimum${best ? `; best guess ${best.text}` : ""})`;
  } else {
    $("answer").textContent = body.answer === "" ? "(no answer)" : body.answer;
  }
  $("confidence").textContent = fixed(body.confidence, 3);
  $("support").textContent = body.support;
  $("n-candidates").textContent = body.n_candidates;
  $("elapsed").textContent = fixed(body.elapsed_ms, 0);
  const table = $("candidates");
  const tbody = table.tBodies[0];
  tbody.replaceChildren();
  for (const c of body.candidates || []) {
    const tr = document.createElement("tr");
    if (c.cluster === 0) tr.className = "winner";
    cell(tr, c.text === "" ? "(empty)" : c.text);
    cell(tr, c.adapter);
    cell(tr, c.prompt);
    cell(tr, c.beam_rank, true);
    cell(tr, fixed(c.score, 3), true);
    cell(tr, fixed(c.weight, 2), true);
    cell(tr, c.grounded ? "yes" : "no");
    cell(tr, c.cluster, true);
    tbody.appendChild(tr);
  }
  table.hidden = !body.candidates;
  $("answer-box").hidden = false;
}

async function ask(event) {
  event.preventDefault();
  const button = $("ask");
  button.disabled = true;
  showError($("ask-error"), null);
  try {
    const payload = {
      context: $("context").value,
      question: $("question").value,
      explain: $("explain").checked,
    };
    const { body } = await call("answer", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(payload),
    });
    renderAnswer(body);
  } catch (err) {
    $("answer-box").hidden = true;
    showError($("ask-error"), err);
  } finally {
    button.disabled = false;
  }
}

function renderRows(rows) {
  const table = $("batch-rows");
  const tbody = table.tBodies[0];
  tbody.replaceChildren();
  for (const r of rows) {
    const tr = document.createElement("tr");
    cell(tr, r.id);
    cell(tr, r.abstained ? "(abstained)" : r.answer);
    cell(tr, fixed(r.confidence, 3), true);
    cell(tr, r.support, true);
    cell(tr, r.error);
    tbody.appendChild(tr);
  }
  table.hidden = false;
}

function renderJob(job) {
  $("job-id").textContent = job.job_id;
  $("job-status").textContent = job.error ? `${job.status}: ${job.error}` : job.status;
  $("job-done").textContent = job.done ?? 0;
  $("job-total").textContent = job.total;
  $("job-progress").max = Math.max(job.total, 1);
  $("job-progress").value = job.done ?? 0;
  $("job-box").hidden = false;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function followJob(accepted) {
  renderJob({ ...accepted, done: 0 });
  for (;;) {
    const { body: job } = await call(accepted.status_url, { headers: headers() });
    renderJob(job);
    if (job.status === "done") break;
    if (job.status !== "queued" && job.status !== "running") return;
    await sleep(700);
  }
  const url = `${accepted.result_url}?format=csv`;
  const link = $("job-download");
  if ($("api-key").value.trim()) {
    // A plain link cannot send the key header: fetch the CSV and hand it to the link as a blob.
    const response = await fetch(url, { headers: headers() });
    if (!response.ok) throw new Error(`${response.status}: the result could not be downloaded`);
    link.href = URL.createObjectURL(await response.blob());
  } else {
    link.href = url;
  }
  link.download = `batch-${accepted.job_id}.csv`;
  link.hidden = false;
}

async function submitBatch(event) {
  event.preventDefault();
  const file = $("batch-file").files[0];
  if (!file) return;
  const button = $("batch-submit");
  button.disabled = true;
  showError($("batch-error"), null);
  $("job-box").hidden = true;
  $("job-download").hidden = true;
  $("batch-rows").hidden = true;
  try {
    const form = new FormData();
    form.append("file", file, file.name);
    const { status, body } = await call("batch", { method: "POST", headers: headers(), body: form });
    if (status === 202) await followJob(body);
    else renderRows(body.rows);
  } catch (err) {
    showError($("batch-error"), err);
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const key = $("api-key");
  key.value = sessionStorage.getItem(KEY_STORE) || "";
  key.addEventListener("change", () => sessionStorage.setItem(KEY_STORE, key.value.trim()));
  $("ask-form").addEventListener("submit", ask);
  $("batch-form").addEventListener("submit", submitBatch);
});
