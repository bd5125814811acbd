// A tiny HTTP/1.1 keep-alive server for edgeshot's data-path benchmarks.
//   GET /            -> 200 "ok"
//   GET /sleep/<ms>  -> 200 "ok" after <ms> milliseconds (a request that takes time)
//   GET /healthz     -> 200 "ok"
const http = require("http");
const port = parseInt(process.env.PORT || "8000", 10);
http.createServer((req, res) => {
  const m = /^\/sleep\/(\d+)/.exec(req.url);
  const done = () => { res.writeHead(200, {"Content-Type": "text/plain", "Content-Length": "2"}); res.end("ok"); };
  if (m) setTimeout(done, parseInt(m[1], 10)); else done();
}).listen(port, "0.0.0.0");
