#!/usr/bin/env python3
"""JupyterLab behind the gateway, driven by headless Chromium: the outsider check of the
data-path issue. Starts a gateway, JupyterLab and an agent on loopback (ports 18180, 19190,
18888), loads the Lab UI through the gateway (screenshot in the printed work dir), then from
the browser's own WebSocket runs cells whose outputs are 400 KB and 1 MB and whose source is
100 KB. Needs `apt-get install chromium chromium-driver`, `pip install jupyterlab selenium`,
and the binaries built (`cargo build -p tunnelgate-gateway -p tunnelgate-agent`; TG_BIN to
point elsewhere). Prints RESULT ok or RESULT FAILED; stops everything it started.
"""
import json, os, signal, subprocess, sys, time, urllib.request, uuid
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

B = os.environ.get("TG_BIN", os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../target/debug"))
T = "quickstart-token-change-me-0123456789"
GW, ADMIN, LAB = 18180, 19190, 18888
JT = "jtok" + uuid.uuid4().hex[:8]
import tempfile
WORK = tempfile.mkdtemp(prefix="tg-jupyter-")
procs = []
def start(args, log):
    p = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    procs.append(p); return p
try:
    start([f"{B}/tunnelgate-gateway", "--cluster", f"demo:{T}", "--listen", f"127.0.0.1:{GW}",
           "--admin-listen", f"127.0.0.1:{ADMIN}", "--log-format", "text"], f"{WORK}/gw.log")
    start(["jupyter", "lab", "--ServerApp.allow_remote_access=True", "--no-browser", "--allow-root",
           f"--port={LAB}", "--ip=127.0.0.1", f"--IdentityProvider.token={JT}", f"--ServerApp.root_dir={WORK}"], f"{WORK}/lab.log")
    time.sleep(1)
    start([f"{B}/tunnelgate-agent", "--gateway", f"ws://127.0.0.1:{GW}", "--cluster", "demo", "--token", T,
           "--route", f"lab.demo.localhost=http://127.0.0.1:{LAB}", "--log-format", "text"], f"{WORK}/agent.log")
    base = f"http://lab.demo.localhost:{GW}"
    # wait for jupyter through the gateway
    for _ in range(120):
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{GW}/api/status?token={JT}", headers={"Host": f"lab.demo.localhost:{GW}"})
            if urllib.request.urlopen(req, timeout=2).status == 200: break
        except Exception as e:
            time.sleep(0.5)
    req = urllib.request.Request(f"http://127.0.0.1:{GW}/api/kernels?token={JT}", data=b"{}", method="POST",
                                 headers={"Host": f"lab.demo.localhost:{GW}", "Content-Type": "application/json"})
    kid = json.load(urllib.request.urlopen(req, timeout=30))["id"]
    print("kernel", kid)
    o = Options(); o.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage"]: o.add_argument(a)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)
    d.set_script_timeout(60)
    d.get(f"{base}/lab?token={JT}")
    time.sleep(6)
    d.save_screenshot(f"{WORK}/lab.png")
    print("title:", d.title)
    js = """
const [url, code, done] = [arguments[0], arguments[1], arguments[arguments.length-1]];
const ws = new WebSocket(url);
const msgId = crypto.randomUUID();
let out = 0, closed = null;
ws.onopen = () => ws.send(JSON.stringify({header:{msg_id:msgId, msg_type:'execute_request', username:'u', session:crypto.randomUUID(), version:'5.3', date:new Date().toISOString()},
   parent_header:{}, metadata:{}, content:{code:code, silent:false, store_history:false, user_expressions:{}, allow_stdin:false}, channel:'shell', buffers:[]}));
ws.onmessage = (e) => { const m = JSON.parse(e.data); if (m.parent_header.msg_id !== msgId) return;
   if (m.msg_type === 'stream') out += m.content.text.length;
   if (m.msg_type === 'execute_result' || m.msg_type === 'display_data') out += JSON.stringify(m.content.data).length;
   if (m.msg_type === 'status' && m.content.execution_state === 'idle') { ws.close(1000); done({out, closed}); } };
ws.onerror = () => done({out, error: 'ws error'});
ws.onclose = (e) => { closed = e.code; if (out === 0) done({out, closed}); };
"""
    ws_url = f"ws://lab.demo.localhost:{GW}/api/kernels/{kid}/channels?token={JT}"
    r1 = d.execute_async_script(js, ws_url, "print('x'*400000)")
    print("300KB+ stream output through the tunnel:", r1)
    r2 = d.execute_async_script(js, ws_url, "'y'*1000000")
    print("1 MB execute_result:", r2)
    big_src = "z = '" + "q"*100000 + "'\nprint(len(z))"
    r3 = d.execute_async_script(js, ws_url, big_src)
    print("100 KB cell source from the browser:", r3)
    d.quit()
    ok = r1.get("out",0) >= 400000 and r2.get("out",0) >= 1000000 and r3.get("out",0) > 0
    print("RESULT", "ok" if ok else "FAILED", "| work dir:", WORK)
    sys.exit(0 if ok else 1)
finally:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try: p.wait(timeout=10)
        except Exception: p.kill()
