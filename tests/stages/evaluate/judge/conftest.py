"""A local OpenAI-compatible judge server (127.0.0.1, bounded, self-stopping)
for the judge tests, and Alpaca instruction records on disk."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


@dataclass
class JudgeServer:
    """The server's base URL and the Authorization header of every request it got."""

    url: str
    seen_auth: list[str | None] = field(default_factory=list)


def _handler(server: JudgeServer) -> type[BaseHTTPRequestHandler]:
    class Judge(BaseHTTPRequestHandler):
        """Chat completions: score prompts get 'Score: 70/100'; compare prompts
        pick the response containing GOOD, except when the instruction says
        BIASED, where it always answers A (position bias)."""

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            server.seen_auth.append(self.headers.get("Authorization"))
            prompt = body["messages"][0]["content"]
            if "scale from 0 to 100" in prompt:
                answer = "Score: 70/100"
            else:
                a = prompt.split("### Response A:")[1].split("### Response B:")[0]
                answer = "A" if ("BIASED" in prompt or "GOOD" in a) else "B"
                answer += "\nBecause it is better."
            data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Judge


@pytest.fixture
def judge_server() -> Iterator[JudgeServer]:
    state = JudgeServer(url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.timeout = 5
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        t.join(timeout=5)


@pytest.fixture
def instruction_file(tmp_path: Path) -> Callable[[int], Path]:
    """``instruction_file(n)``: n Alpaca records ("Name a colour number i.", reference "Blue.") as inst.json."""

    def write(n: int = 3) -> Path:
        data = [{"instruction": f"Name a colour number {i}.", "input": "", "output": "Blue."} for i in range(n)]
        path = tmp_path / "inst.json"
        path.write_text(json.dumps(data))
        return path

    return write
