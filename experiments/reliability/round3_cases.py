"""Issue-23 cases (classes 1, 2, 3, 6, 7) run through the CLI of whichever mtllm is importable:
`python experiments/reliability/round3_cases.py SCRATCH_DIR`.
Prints one line per case: name | exit code | last stderr line (shortened) | extra facts."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

W = Path(sys.argv[1])
shutil.rmtree(W, ignore_errors=True)
W.mkdir(parents=True)
# the cache folder is chosen before mtllm is imported, so nothing in it can have looked at the default
os.environ.setdefault("MTLLM_CACHE", str(W / "cache"))
from mtllm import MTLLMModel, LoraSettings  # noqa: E402 -- after MTLLM_CACHE is set, on purpose
from mtllm.sources import resolve_source  # noqa: E402 -- after MTLLM_CACHE is set, on purpose
torch.manual_seed(0)
m = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=LoraSettings(r=2, alpha=4, dropout=0.0),
                                    max_seq_length=32)
m.set_head("classification", ["a", "b", "c"])
m.save_pretrained(W / "good")
m.save_pretrained(W / "full", full=True)
(W / "in.csv").write_text("id,text\n" + "".join(f"{i},Sentence number {i} is here.\n" for i in range(1, 2001)))

def cli(*args, stdin=None, env=None):
    p = subprocess.run([sys.executable, "-m", "mtllm", *map(str, args)], capture_output=True, text=True, input=stdin,
                       env={**os.environ, **(env or {})}, timeout=600)
    last = (p.stderr.strip().splitlines() or [""])[-1]
    tb = "Traceback" in p.stderr
    return p.returncode, ("TRACEBACK " if tb else "") + last[:230]

def report(name, result, extra=""):
    print(f"{name} | exit {result[0]} | {result[1]} | {extra}", flush=True)

# 1. custom code in an encoder folder, stdin answers y
evil = W / "evil"
shutil.copytree(W / "full", evil)
shutil.rmtree(evil / "encoder")
shutil.copytree(resolve_source("tiny:xlmr"), evil / "encoder")
cfg = json.loads((evil / "encoder" / "config.json").read_text())
cfg.update(model_type="evil-roberta",
           auto_map={"AutoConfig": "modeling_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"})
(evil / "encoder" / "config.json").write_text(json.dumps(cfg))
marker = W / "marker"
(evil / "encoder" / "modeling_evil.py").write_text(
    f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import XLMRobertaConfig, XLMRobertaModel\nclass "
    "EvilConfig(XLMRobertaConfig):\n    model_type='evil-roberta'\nclass EvilModel(XLMRobertaModel):\n    "
    "config_class=EvilConfig\n")
(W / "one.txt").write_text("Hello there.\n")
r = cli("predict", "--model", evil, "--input", W / "one.txt", "--lang", "eng_Latn", "--output", W / "evil.jsonl",
        stdin="y\ny\ny\n")
report("1 auto_map encoder, stdin y", r, f"custom code ran: {marker.exists()}")

# 2. two predicts on one output at once
out = W / "two.jsonl"
args = ["predict", "--model", W / "good", "--input", W / "in.csv", "--text_column", "text", "--id_column", "id",
        "--lang", "eng_Latn", "--output", out, "--progress", "false"]
a = subprocess.Popen([sys.executable, "-m", "mtllm", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True)
time.sleep(4)
b = cli(*args)
a_out, a_err = a.communicate()
rows = len(out.read_text().splitlines()) if out.exists() else 0
report("2 two predicts, one output", b, f"first exit {a.returncode}; output rows {rows} for 2000 inputs")

# 3. encode --input X.ids.txt --output X.npy --overwrite
(W / "X.ids.txt").write_text("Hello there.\nBonjour.\n")
r = cli("encode", "--model", W / "good", "--input", W / "X.ids.txt", "--lang", "eng_Latn", "--output", W / "X.npy",
        "--overwrite", "true")
report("3 encode input = the .npy's .ids.txt", r, f"input now: {(W / 'X.ids.txt').read_text()[:30]!r}")

# 6. model folders
def copy(name):
    d = W / name
    shutil.copytree(W / "good", d)
    return d
d = copy("hidden")
c = json.loads((d / "config.json").read_text())
c["llm_hidden_size"] = 64
(d / "config.json").write_text(json.dumps(c))
report("6 config.json hidden size != base",
       cli("predict", "--model", d, "--input", W / "one.txt", "--lang", "eng_Latn", "--output", W / "h.jsonl"))
torch.manual_seed(1)
o = MTLLMModel.from_encoder_and_llm("tiny:xlmr", "tiny:gemma3", lora=LoraSettings(r=2, alpha=4, dropout=0.0),
                                    max_seq_length=32)
o.set_head("classification", ["a", "b", "c", "d"])
o.save_pretrained(W / "other4")
d = copy("head")
shutil.copy(W / "other4" / "model.safetensors", d / "model.safetensors")
report("6 head of another shape",
       cli("predict", "--model", d, "--input", W / "one.txt", "--lang", "eng_Latn", "--output", W / "hd.jsonl"))
twin = W / "twin-gemma"
shutil.copytree(resolve_source("tiny:gemma3"), twin)
o2 = MTLLMModel.from_encoder_and_llm("tiny:xlmr", str(twin), lora=LoraSettings(r=2, alpha=4, dropout=0.0),
                                     max_seq_length=32)
o2.set_head("classification", ["a", "b", "c"])
o2.save_pretrained(W / "othertwin")
d = copy("adapter")
shutil.rmtree(d / "adapter")
shutil.copytree(W / "othertwin" / "adapter", d / "adapter")
report("6 adapter of another base (same shapes)",
       cli("predict", "--model", d, "--input", W / "one.txt", "--lang", "eng_Latn", "--output", W / "ad.jsonl"))
d = copy("pickle")
torch.save({"x": torch.zeros(1)}, d / "pytorch_model.bin")
report("6 pickle file in the folder",
       cli("predict", "--model", d, "--input", W / "one.txt", "--lang", "eng_Latn", "--output", W / "pk.jsonl"))

# 7. output types and limits
(W / "mixed.jsonl").write_text("\n".join(json.dumps({"id": i, "text": "Hello there."}) for i in (1, "x2", 3)) + "\n")
report("7 mixed id types to parquet",
       cli("predict", "--model", W / "good", "--input", W / "mixed.jsonl", "--id_column", "id", "--lang", "eng_Latn",
           "--output", W / "mixed.parquet"))
report("7 output name whose companions are too long",
       cli("encode", "--model", W / "good", "--input", W / "one.txt", "--lang", "eng_Latn", "--output",
           W / ("p" * 230 + ".npy")))
