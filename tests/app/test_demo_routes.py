"""The demo page's files over TestClient (no browser): served, out of the schema, open when a key is set."""

from app.auth import is_open_path


def test_index_and_static_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="static/demo.js"' in page.text
    script = client.get("/static/demo.js")
    assert script.status_code == 200 and "textContent" in script.text
    assert "innerHTML" not in script.text  # model output is never rendered as HTML
    assert client.get("/static/demo.css").status_code == 200
    assert client.get("/static/missing.js").status_code == 404
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_only_the_page_and_its_files_are_open_besides_the_probes():
    assert all(is_open_path(p) for p in ("/", "/static/demo.js", "/healthz", "/readyz"))
    assert not any(is_open_path(p) for p in ("/answer", "/batch", "/docs", "/openapi.json", "/static"))
