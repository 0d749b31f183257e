"""The real `openai` Python client (and plain HTTP for the REST routes) against `zhiku serve`.

Run by tests/http.rs: python3 openai_client.py BASE_URL CA.pem FULL_KEY READ_ONLY_KEY METRICS_URL
The server speaks TLS (certificates from the test's CA) and wants API keys. Exits non-zero
on the first failed check. Every check prints one line.
"""

import json
import math
import re
import ssl
import sys
import time
import urllib.error
import urllib.request
import uuid

import openai

BASE, CA, FULL_KEY, READ_ONLY_KEY, METRICS_URL = sys.argv[1].rstrip("/"), *sys.argv[2:6]
TLS = ssl.create_default_context(cafile=CA)
KB = "openai"
ANSWER_WORDS = ("玩手机", "打游戏", "看电影")
REFUSAL = "根据已知信息无法回答该问题"


def check(condition, what, detail=""):
    if not condition:
        print(f"FAILED: {what}\n{detail}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def http(method, path, body=None, headers=None, key=FULL_KEY, url=None):
    """(status, parsed JSON or text) of one HTTPS call, with `key` as the bearer (None: none)."""
    data = None
    headers = dict(headers or {})
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    if body is not None and not isinstance(body, bytes):
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    elif body is not None:
        data = body
    request = urllib.request.Request(url or BASE + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=300, context=TLS) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def multipart(files):
    """A multipart/form-data body of (name, bytes) files, and its content type."""
    boundary = uuid.uuid4().hex
    out = b""
    for name, content in files:
        out += (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
            f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode() + content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"multipart/form-data; boundary={boundary}"


def inline_markers(content):
    """The [n] markers in the answer's text, before the `[n] source` lines at its end."""
    answer = content.split("\n\n[1] ")[0]
    return [int(n) for n in re.findall(r"\[(\d+)\]", answer)]


def check_inline(content, sources, what):
    """Inline markers are there, each the number of one of the sources."""
    markers, numbers = inline_markers(content), {s["number"] for s in sources}
    check(markers and set(markers) <= numbers, what, f"{content}\n{numbers}")
    print(f"   content: {content!r}", flush=True)


def is_openai_error(body, code):
    return isinstance(body, dict) and body.get("error", {}).get("code") == code


# ---- Start-up: /healthz needs no key, and says SERVING once the downstream services are.
deadline = time.monotonic() + 180
while True:
    try:
        status, body = http("GET", "/healthz", key=None)
    except OSError as e:  # not listening yet
        status, body = None, str(e)
    if status == 200:
        break
    if time.monotonic() > deadline:
        check(False, "the server is SERVING", body)
    time.sleep(0.3)
check(body == {"status": "SERVING"}, "/healthz over https (TLS from the test CA), without a key", body)
status, page = http("GET", "/", key=None)
check(status == 200 and "app.js" in page, "the web page needs no key", page[:200])

# ---- Keys on the REST routes: none or a wrong one is 401; a read-only one may not write.
status, body = http("GET", "/v1/knowledge_bases", key=None)
check(status == 401 and is_openai_error(body, "unauthenticated"), "no key: 401 with OpenAI's error JSON", body)
status, body = http("GET", "/v1/knowledge_bases", key="not-a-key")
check(status == 401 and body["error"]["type"] == "authentication_error", "a wrong key: 401", body)
status, body = http("POST", "/v1/knowledge_bases", {"name": KB}, key=READ_ONLY_KEY)
check(status == 403 and is_openai_error(body, "permission_denied"), "a read-only key cannot create (403)", body)

# ---- REST: knowledge bases and an upload with one failing file.
status, kb = http("POST", "/v1/knowledge_bases", {"name": KB, "description": "openai client test"})
check(status == 201 and kb["name"] == KB and kb["dimensions"] > 0, "create a knowledge base", kb)
dims = kb["dimensions"]
status, body = http("POST", "/v1/knowledge_bases", {"name": KB})
check(status == 409 and is_openai_error(body, "already_exists"), "a second create is 409 with OpenAI's error JSON", body)
status, body = http("POST", "/v1/knowledge_bases", b"{not json", {"content-type": "application/json"})
check(status == 400 and body["error"]["type"] == "invalid_request_error", "a malformed body is 400", body)

upload, content_type = multipart([
    ("xiaoshi.txt", "小拾喜欢玩手机、打游戏、看电影。阿敏喜欢吐槽小拾。".encode()),
    ("broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\ngarbage"),
])
status, body = http("POST", f"/v1/knowledge_bases/{KB}/documents", upload, {"content-type": content_type})
stages = {f["source"]: f for f in body.get("files", [])} if isinstance(body, dict) else {}
check(
    status == 200
    and stages.get("xiaoshi.txt", {}).get("stage") == "stored"
    and stages.get("broken.pdf", {}).get("stage") == "failed"
    and stages["broken.pdf"]["error"]
    and body["summary"]["files_ingested"] == 1
    and body["summary"]["files_failed"] == 1,
    "an upload stores the good file and reports the broken one",
    body,
)

# The same upload, streamed: one JSON object a line, each file's steps, then the summary.
upload, content_type = multipart([("kb.txt", "知识库问答的流程：先把文档切成段落，再检索最相近的段落。".encode())])
status, text = http(
    "POST", f"/v1/knowledge_bases/{KB}/documents", upload,
    {"content-type": content_type, "accept": "application/x-ndjson"},
)
lines = [json.loads(line) for line in text.splitlines()] if isinstance(text, str) else []
steps = [line["file"]["stage"] for line in lines if "file" in line]
check(
    status == 200 and steps[0] == "loaded" and steps[-1] == "stored" and "embedded" in steps
    and "summary" in lines[-1],
    "a streamed upload reports each file's progress",
    text,
)
status, docs = http("GET", f"/v1/knowledge_bases/{KB}/documents")
check(
    status == 200 and sorted(d["document_id"] for d in docs["data"]) == ["kb.txt", "xiaoshi.txt"],
    "the documents are listed",
    docs,
)

# The read-only key reads, but neither uploads nor deletes.
status, body = http("GET", f"/v1/knowledge_bases/{KB}/documents", key=READ_ONLY_KEY)
check(status == 200 and len(body["data"]) == 2, "a read-only key lists the documents", body)
upload, content_type = multipart([("more.txt", "只读密钥不能上传。".encode())])
status, body = http(
    "POST", f"/v1/knowledge_bases/{KB}/documents", upload, {"content-type": content_type}, key=READ_ONLY_KEY,
)
check(status == 403 and body["error"]["type"] == "permission_error", "a read-only key cannot upload (403)", body)
status, body = http("DELETE", f"/v1/knowledge_bases/{KB}/documents/kb.txt", key=READ_ONLY_KEY)
check(status == 403 and is_openai_error(body, "permission_denied"), "a read-only key cannot delete a document (403)", body)
status, body = http("DELETE", f"/v1/knowledge_bases/{KB}", key=READ_ONLY_KEY)
check(status == 403, "a read-only key cannot delete the knowledge base (403)", body)


def openai_client(key):
    """The openai client over https, trusting the test CA."""
    return openai.OpenAI(
        base_url=BASE + "/v1", api_key=key, max_retries=0, timeout=300,
        http_client=openai.DefaultHttpxClient(verify=TLS),
    )


# ---- The openai client: a wrong key raises AuthenticationError.
for what, call in (
    ("models", lambda c: c.models.list()),
    ("a chat completion", lambda c: c.chat.completions.create(
        model=f"kb:{KB}", messages=[{"role": "user", "content": "小拾喜欢做什么？"}], max_tokens=8)),
):
    try:
        call(openai_client("not-a-key"))
        check(False, f"a wrong key is refused ({what})")
    except openai.AuthenticationError as e:
        check(e.status_code == 401 and e.body["code"] == "unauthenticated", f"a wrong key: AuthenticationError, 401 ({what})", e.body)

client = openai_client(FULL_KEY)
models = [m.id for m in client.models.list().data]
check(f"kb:{KB}" in models and len(models) >= 2, "models list the knowledge base and the generator", models)
generator = next(m for m in models if not m.startswith("kb:"))

question = [{"role": "user", "content": "小拾喜欢做什么？"}]
unary = client.chat.completions.create(model=f"kb:{KB}", messages=question, max_tokens=40)
content = unary.choices[0].message.content
extension = unary.model_extra["zhiku"]
check(any(w in content for w in ANSWER_WORDS), "a unary answer from the knowledge base", content)
check(
    "[1] " in content and any(s["source"] == "xiaoshi.txt" and "玩手机" in s["text"] for s in extension["sources"])
    and extension["refused"] is False and unary.choices[0].finish_reason in ("stop", "length")
    and unary.usage.completion_tokens > 0,
    "its citations: [n] markers in the content and zhiku.sources",
    f"{content}\n{extension}",
)
check_inline(content, extension["sources"], "the answer's sentences carry inline [n] markers that match zhiku.sources")

reader = openai_client(READ_ONLY_KEY)
read_only = reader.chat.completions.create(model=f"kb:{KB}", messages=question, max_tokens=24)
check(
    read_only.choices[0].message.content and read_only.model_extra["zhiku"]["sources"]
    and "[1]" in read_only.choices[0].message.content,
    "a read-only key asks: an answer with its citations",
    read_only,
)

stream = client.chat.completions.create(
    model=KB, messages=question, max_tokens=40, stream=True, stream_options={"include_usage": True},
)
pieces, first_zhiku, last_zhiku, finish, usage = [], None, None, None, None
for chunk in stream:
    extra = (chunk.model_extra or {}).get("zhiku")
    if extra is not None and first_zhiku is None:
        first_zhiku = extra
    if chunk.usage is not None:
        usage = chunk.usage
    if not chunk.choices:
        continue
    if chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.choices[0].finish_reason is not None:
        finish, last_zhiku = chunk.choices[0].finish_reason, extra
streamed = "".join(pieces)
check(len(pieces) > 2 and any(w in streamed for w in ANSWER_WORDS), "a streamed answer (bare NAME as model)", streamed)
check(
    first_zhiku and any(s["source"] == "xiaoshi.txt" for s in first_zhiku["sources"])
    and last_zhiku and last_zhiku["refused"] is False and last_zhiku["sources"]
    and "[1] " in streamed and finish in ("stop", "length") and usage and usage.completion_tokens > 0,
    "its citations in the first and the last chunk, and in the content",
    f"{streamed}\n{first_zhiku}\n{last_zhiku}",
)
check_inline(streamed, first_zhiku["sources"], "the streamed answer carries inline [n] markers too")

refusal = client.chat.completions.create(
    model=f"kb:{KB}", messages=[{"role": "user", "content": "量子计算机的纠错码有哪些种类？"}],
    extra_body={"zhiku": {"score_threshold": 0.99}},
)
check(
    refusal.choices[0].message.content == REFUSAL and refusal.choices[0].finish_reason == "stop"
    and refusal.model_extra["zhiku"]["refused"] is True,
    "a refusal is an ordinary answer with zhiku.refused",
    refusal,
)
refused_pieces = []
for chunk in client.chat.completions.create(
    model=f"kb:{KB}", messages=[{"role": "user", "content": "量子计算机的纠错码有哪些种类？"}],
    extra_body={"zhiku": {"score_threshold": 0.99}}, stream=True,
):
    if chunk.choices and chunk.choices[0].delta.content:
        refused_pieces.append(chunk.choices[0].delta.content)
    if chunk.choices and chunk.choices[0].finish_reason:
        check(
            chunk.choices[0].finish_reason == "stop" and chunk.model_extra["zhiku"]["refused"] is True,
            "a streamed refusal ends with stop and zhiku.refused",
            chunk,
        )
check("".join(refused_pieces) == REFUSAL, "the streamed refusal holds the refusal text", refused_pieces)

plain = client.chat.completions.create(
    model=generator, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8,
)
check(plain.choices[0].message.content and "zhiku" not in (plain.model_extra or {}), "the generator's model is a plain chat", plain)

try:
    client.chat.completions.create(model="kb:nope", messages=question, max_tokens=8)
    check(False, "an unknown knowledge base is refused")
except openai.NotFoundError as e:
    check(e.status_code == 404 and e.body["code"] == "not_found", "an unknown knowledge base is 404 (NOT_FOUND on gRPC)", e.body)
try:
    client.chat.completions.create(model=KB, messages=[{"role": "assistant", "content": "hi"}])
    check(False, "a conversation without a question is refused")
except openai.BadRequestError as e:
    check(e.status_code == 400 and e.body["type"] == "invalid_request_error", "a conversation without a question is 400", e.body)

# ---- Embeddings: the client asks for base64 by default; float on request.
texts = ["小拾喜欢玩手机", "knowledge base"]
for encoding in (None, "float"):
    kwargs = {} if encoding is None else {"encoding_format": encoding}
    result = client.embeddings.create(model="embedder", input=texts, **kwargs)
    vectors = [d.embedding for d in result.data]
    check(
        len(vectors) == 2 and all(len(v) == dims for v in vectors)
        and all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)
        and result.usage.prompt_tokens > 0,
        f"embeddings ({encoding or 'the default, base64'}): {len(vectors)} vectors of {dims} dimensions, unit length",
        result,
    )

# ---- /metrics over https: guarded by the key on the HTTP port and on --metrics-listen.
status, body = http("GET", "/metrics", key=None)
check(status == 401, "/metrics on the HTTP port wants a key", body)
for where, url in (("the HTTP port", None), ("--metrics-listen", METRICS_URL)):
    status, text = http("GET", "/metrics", key=READ_ONLY_KEY, url=url)
    refusals = [
        float(line.split()[-1]) for line in text.splitlines() if line.startswith("zhiku_auth_refusals_total")
    ] if isinstance(text, str) else []
    check(
        status == 200 and "# TYPE zhiku_requests_total counter" in text and refusals and refusals[0] >= 9,
        f"/metrics over https on {where}: counters, with the refused calls counted",
        text if status != 200 else refusals,
    )
status, body = http("GET", "/metrics", key=None, url=METRICS_URL)
check(status == 401, "/metrics on --metrics-listen wants a key too", body)

# ---- REST: deletes.
status, body = http("DELETE", f"/v1/knowledge_bases/{KB}/documents/kb.txt")
check(status == 200 and body["deleted_passages"] >= 1, "delete a document", body)
status, body = http("DELETE", f"/v1/knowledge_bases/{KB}/documents/kb.txt")
check(status == 404 and is_openai_error(body, "not_found"), "a deleted document is gone (404)", body)
status, body = http("DELETE", f"/v1/knowledge_bases/{KB}")
check(status == 200 and body["deleted"], "delete the knowledge base", body)
status, body = http("GET", f"/v1/knowledge_bases/{KB}")
check(status == 404, "the deleted knowledge base is gone (404)", body)
print("openai client checks passed")
