"""Benchmark: a tiny LitGPT model's training step on CPU, by vocabulary size.

    .venv/bin/python bench/train_step.py [THREADS]
"""
import time, torch, sys
from litgpt.model import GPT, Config
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
for vocab in (50257, 2048, 1024):
    cfg = Config(name="t", block_size=128, n_layer=2, n_embd=64, n_head=4, vocab_size=vocab, padding_multiple=64,
                 rotary_percentage=1.0, parallel_residual=False, bias=False, norm_class_name="LayerNorm",
                 mlp_class_name="GptNeoxMLP", intermediate_size=256)
    m = GPT(cfg); opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x = torch.randint(0, vocab, (16, 129))
    for i in range(23):
        if i == 3: t = time.perf_counter()
        logits = m(x[:, :-1]); loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        loss.backward(); opt.step(); opt.zero_grad()
    dt = (time.perf_counter() - t) / 20
    print(f"threads {torch.get_num_threads()} vocab {vocab}: {2048/dt:,.0f} tok/s")
