"""The real `openai` Python client (and plain HTTP for the REST routes) against `zhiku serve`.

Run by tests/http.rs with the server's HTTP base URL; exits non-zero on the first failed
check. Every check prints one line.
"""

import json
import math
import sys
import urllib.error
import urllib.request
import uuid

import openai

BASE = sys.argv[1].rstrip("/")
KB = "openai"
ANSWER_WORDS = ("玩手机", "打游戏", "看电影")
REFUSAL = "根据已知信息无法回答该问题"


def check(condition, what, detail=""):
    if not condition:
        print(f"FAILED: {what}\n{detail}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def http(method, path, body=None, headers=None):
    """(status, parsed JSON or text) of one HTTP call."""
    data = None
    headers = dict(headers or {})
    if body is not None and not isinstance(body, bytes):
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    elif body is not None:
        data = body
    request = urllib.request.Request(BASE + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
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


def is_openai_error(body, code):
    return isinstance(body, dict) and body.get("error", {}).get("code") == code


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

# ---- The openai client.
client = openai.OpenAI(base_url=BASE + "/v1", api_key="not-checked", max_retries=0, timeout=300)
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
