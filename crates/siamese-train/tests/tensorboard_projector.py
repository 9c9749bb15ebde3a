"""Reads a projector folder with TensorBoard's own projector plugin, as `tensorboard
--logdir` would serve it, and prints what it found as JSON."""
import json, os, sys
from werkzeug import test as wtest
from tensorboard.plugins import base_plugin
from tensorboard.plugins.projector import projector_plugin

logdir = sys.argv[1]
plugin = projector_plugin.ProjectorPlugin(base_plugin.TBContext(logdir=logdir))
apps = plugin.get_plugin_apps()
def get(route, **q):
    client = wtest.Client(apps[route])
    r = client.get(route, query_string=q)
    return r.status_code, r.get_data()
out = {}
status, body = get("/runs")
out["runs"] = json.loads(body)
run = out["runs"][0]
status, body = get("/info", run=run)
info = json.loads(body)
emb = info["embeddings"][0]
out["tensor_name"] = emb["tensorName"]
out["shape"] = emb.get("tensorShape")
out["sprite_dim"] = emb.get("sprite", {}).get("singleImageDim")
status, body = get("/tensor", run=run, name=emb["tensorName"])
out["tensor_status"] = status
out["tensor_bytes"] = len(body)
status, body = get("/metadata", run=run, name=emb["tensorName"])
out["metadata_status"] = status
out["metadata_lines"] = body.decode().count("\n")
status, body = get("/sprite_image", run=run, name=emb["tensorName"])
out["sprite_status"] = status
out["sprite_png"] = body[:8] == b"\x89PNG\r\n\x1a\n"
print(json.dumps(out))
