"""The web page in a real browser: headless Chromium driven over the DevTools protocol.

Run by tests/http.rs: python3 browser.py BASE_URL CHROMIUM SCREENSHOT.png FULL_KEY READ_ONLY_KEY
The server speaks TLS with the test's own CA (Chromium is told to accept its certificate) and
wants API keys: the page shows its 401 message, marks its key field and gives it the focus
until a key is entered there (then lists the knowledge bases), and
its 403 message when a read-only key tries to create a knowledge base.
With the browser's language set to Chinese (navigator.language zh-CN), it creates a knowledge base on the page, uploads
a Chinese document through the page's file input (the same path as a drop), asks a question,
watches the answer stream in, clicks a citation to see its passage, and saves a screenshot.
The DevTools protocol is JSON over one WebSocket: websocket-client is the only dependency.
"""

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket

BASE, CHROMIUM, SCREENSHOT, FULL_KEY, READ_ONLY_KEY = sys.argv[1].rstrip("/"), *sys.argv[2:6]
ANSWER_WORDS = ("玩手机", "打游戏", "看电影")


class Page:
    def __init__(self, url):
        self.ws = websocket.create_connection(url, suppress_origin=True, timeout=60)
        self.next_id = 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def eval(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression, what, timeout=300, every=0.05):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(every)
        body = self.eval("document.body.innerText")
        raise RuntimeError(f"timed out waiting for {what}\n--- page text ---\n{body}")


def check(condition, what, detail=""):
    if not condition:
        print(f"FAILED: {what}\n{detail}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


profile = tempfile.mkdtemp(prefix="zhiku-chromium-")
browser = subprocess.Popen(
    [
        CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions",
        f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-allow-origins=*",
        "--window-size=1280,900", "--ignore-certificate-errors", "about:blank",
    ],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
try:
    # Chromium writes the port it picked into the profile.
    port_file = os.path.join(profile, "DevToolsActivePort")
    deadline = time.monotonic() + 60
    while not (os.path.exists(port_file) and open(port_file).read().strip()):
        if time.monotonic() >= deadline or browser.poll() is not None:
            check(False, "chromium started", f"exit status {browser.poll()}")
        time.sleep(0.1)
    port = open(port_file).read().split()[0]
    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
    page = Page(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])
    page.call("Page.enable")
    # A Chinese browser: headless Chromium ignores --lang, the user-agent override does not.
    user_agent = page.call("Browser.getVersion")["userAgent"]
    page.call("Emulation.setUserAgentOverride", userAgent=user_agent, acceptLanguage="zh-CN,zh")
    page.call("Page.navigate", url=f"{BASE}/?max_tokens=40")
    page.wait("document.readyState === 'complete' && window.zhiku !== undefined", "the page")
    check(page.eval("window.zhiku.lang") == "zh" and page.eval("document.getElementById('ask').textContent") == "提问",
          "the page speaks Chinese to a Chinese browser", page.eval("navigator.language"))

    # No key yet: the page says that one is needed, in Chinese.
    page.wait("document.getElementById('status').textContent.includes('401')", "the 401 message")
    check("需要 API 密钥" in page.eval("document.getElementById('status').textContent"),
          "without a key the page asks for one (401, in Chinese)", page.eval("document.getElementById('status').textContent"))

    # ...and asks for it: the key form is marked and holds the focus; nothing is listed.
    check(page.eval("document.getElementById('key-form').classList.contains('need-key') && "
                    "document.activeElement === document.getElementById('api-key') && "
                    "document.getElementById('kb-select').options.length === 0"),
          "the 401 marks the key form and focuses the key field",
          page.eval("document.getElementById('key-form').className + ' / ' + (document.activeElement || {}).id"))

    def use_key(key):
        page.eval(f"document.getElementById('api-key').value = {json.dumps(key)}; "
                  "document.getElementById('key-form').requestSubmit(); 1")

    # A read-only key lists, but may not create.
    use_key(READ_ONLY_KEY)
    page.wait("document.getElementById('status').className !== 'error'", "the key accepted")
    # Saving the key clears the mark and reloads the knowledge-base list.
    page.wait("document.getElementById('kb-select').options.length > 0", "the list reloaded with the key")
    check(not page.eval("document.getElementById('key-form').classList.contains('need-key')"),
          "a saved key clears the mark and the knowledge bases are listed")
    page.eval("document.getElementById('kb-new').value = 'webpage'; document.getElementById('kb-form').requestSubmit(); 1")
    page.wait("document.getElementById('status').textContent.includes('403')", "the 403 message")
    check("只读" in page.eval("document.getElementById('status').textContent"),
          "a read-only key cannot create a knowledge base (403, in Chinese)", page.eval("document.getElementById('status').textContent"))

    use_key(FULL_KEY)
    check(page.eval("localStorage.getItem('zhiku.apiKey')") == FULL_KEY, "the key is kept in localStorage")
    # A reload keeps it, and every call after carries it (the upload and the streamed ask too).
    page.call("Page.navigate", url=f"{BASE}/?max_tokens=40")
    page.wait("document.readyState === 'complete' && window.zhiku !== undefined", "the page again")
    check(page.eval("document.getElementById('api-key').value") == FULL_KEY, "the key field holds the kept key after a reload")
    page.eval("document.getElementById('kb-new').value = 'webpage'; document.getElementById('kb-form').requestSubmit(); 1")
    page.wait("document.getElementById('kb-select').value === 'webpage'", "the new knowledge base selected")
    check(True, "a knowledge base created on the page")

    document = os.path.join(profile, "小拾.txt")
    with open(document, "w", encoding="utf-8") as f:
        f.write("小拾喜欢玩手机、打游戏、看电影。阿敏喜欢吐槽小拾。")
    root = page.call("DOM.getDocument")["root"]["nodeId"]
    node = page.call("DOM.querySelector", nodeId=root, selector="#file-input")["nodeId"]
    page.call("DOM.setFileInputFiles", nodeId=node, files=[document])
    page.wait("!!document.querySelector('#uploads .file.done, #uploads .file.failed')", "the upload")
    check(page.eval("!!document.querySelector('#uploads .file.done') && document.querySelector('#uploads progress').value === 100"),
          "the Chinese document uploaded, its progress at 100%", page.eval("document.getElementById('uploads').innerText"))
    page.wait("document.querySelector('#docs tbody').innerText.includes('小拾.txt')", "the document listed")
    check(True, "the document is listed")

    page.eval("document.getElementById('question').value = '小拾喜欢做什么？'; document.getElementById('ask-form').requestSubmit(); 1")
    # Streaming: text shows while the answer is still marked as streaming.
    page.wait("(() => { const a = document.querySelector('.answer.streaming'); return a && a.textContent.length > 0; })()",
              "part of the answer while it streams", every=0.02)
    check(True, "the answer streams in")
    page.wait("window.zhiku.answers >= 1", "the whole answer")
    answer = page.eval("document.querySelector('.turn .answer').innerText")
    check(any(w in answer for w in ANSWER_WORDS) and page.eval("window.zhiku.chunks") > 1
          and not page.eval("!!document.querySelector('.turn .error')"), "the answer", answer)
    check(page.eval("document.querySelectorAll('.turn .answer button.cite').length") >= 1
          and page.eval("document.querySelectorAll('.turn .sources button.cite').length") >= 1,
          "citations [n] are shown in the answer's text and under it",
          page.eval("document.querySelector('.turn').innerHTML"))
    page.eval("document.querySelector('.turn .sources button.cite').click(); 1")
    page.wait("!document.getElementById('passage').hidden", "the passage panel")
    passage = page.eval("document.getElementById('passage').innerText")
    check("玩手机" in passage and "小拾.txt" in passage, "clicking the citation shows its passage, source and score", passage)

    shot = page.call("Page.captureScreenshot", format="png")["data"]
    os.makedirs(os.path.dirname(os.path.abspath(SCREENSHOT)), exist_ok=True)
    with open(SCREENSHOT, "wb") as f:
        f.write(base64.b64decode(shot))
    check(os.path.getsize(SCREENSHOT) > 1000, f"screenshot saved: {os.path.abspath(SCREENSHOT)}")
    page.call("Browser.close")
    print("web page checks passed")
finally:
    if browser.poll() is None:
        browser.terminate()
        try:
            browser.wait(10)
        except subprocess.TimeoutExpired:
            browser.kill()
