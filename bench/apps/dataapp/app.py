"""A data app for the restore benchmark: pandas + scikit-learn, a model fitted at start-up.

    GET /healthz                        -> 200 "ok"
    GET /predict?size=&rooms=&age=      -> 200 {"price": ...} from the fitted forest
    GET /stats                          -> 200 the training set's describe() as JSON

Cold boot pays for importing pandas and scikit-learn and fitting the model; a restore
brings the fitted model back (the point of appshots for apps like this one).
"""

import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor

rng = np.random.default_rng(7)
N = 10_000
df = pd.DataFrame({"size": rng.uniform(20, 200, N), "rooms": rng.integers(1, 7, N),
                   "age": rng.uniform(0, 80, N)})
df["price"] = 3000 * df["size"] + 10000 * df["rooms"] - 500 * df["age"] + rng.normal(0, 2e4, N)
FEATURES = ["size", "rooms", "age"]
model = RandomForestRegressor(n_estimators=20, max_depth=8, random_state=0, n_jobs=1)
model.fit(df[FEATURES], df["price"])
STATS = json.loads(df.describe().to_json())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/healthz":
            body = b"ok"
        elif url.path == "/predict":
            q = {k: float(v[0]) for k, v in parse_qs(url.query).items() if k in FEATURES}
            row = pd.DataFrame([{f: q.get(f, float(df[f].median())) for f in FEATURES}])
            body = json.dumps({"price": round(float(model.predict(row)[0]), 2)}).encode()
        elif url.path == "/stats":
            body = json.dumps(STATS).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
