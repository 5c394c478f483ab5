"""Embedding throughput of all-MiniLM-L6-v2 on a GPU (fp32, fp16) and on the host CPUs: the
figures behind docs/scaling.md's GPU worker sizing. Prints, asserts nothing.

Run: python bench/bench_embed_device.py MODEL_DIR QUERIES_JSON (a JSON list of strings).
"""

import json
import os
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
import torch
from sentence_transformers import SentenceTransformer

with open(sys.argv[2]) as f:
    qs = json.load(f)
print(
    "torch",
    torch.__version__,
    "cuda",
    torch.cuda.is_available(),
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
)
out = []


def run(model, texts, bs, label):
    model.encode(texts[: bs * 2], batch_size=bs, normalize_embeddings=True, show_progress_bar=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    v = model.encode(texts, batch_size=bs, normalize_embeddings=True, show_progress_bar=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    line = f"{label} batch={bs}: {len(texts) / dt:,.0f} queries/s ({len(texts)} in {dt:.2f} s)"
    print(line, flush=True)
    out.append(line)
    return v


gpu32 = SentenceTransformer(sys.argv[1], device="cuda")
gpu32 = gpu32.float()
ref = None
for bs in (64, 256, 1024):
    v = run(gpu32, qs, bs, "cuda fp32")
    ref = v if ref is None else ref
gpu16 = SentenceTransformer(sys.argv[1], device="cuda").half()
for bs in (64, 256, 1024):
    v16 = run(gpu16, qs, bs, "cuda fp16")

print("mean cosine fp16 vs fp32:", float((v16 * ref).sum(1).mean()))
torch.set_num_threads(16)
cpu = SentenceTransformer(sys.argv[1], device="cpu").float()
run(cpu, qs[:4000], 64, "cpu16 fp32")
os.makedirs(os.environ.get("OUT", "/tmp"), exist_ok=True)
with open(os.path.join(os.environ.get("OUT", "/tmp"), "gpu_embed.txt"), "w") as f:
    f.write("\n".join(out) + "\n")
