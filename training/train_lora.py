"""Stage 4: train the "outlined" style LoRA (thick black outlines around shapes).

Styled pictures come from the same generator (render(spec, outline=True)) with
captions that start with the trigger word: "an outlined red circle ...".
LoRA (PEFT) on the UNet attention (to_q/to_k/to_v/to_out.0) and ResNet
convolutions (conv1/conv2), and on the text encoder attention (q/k/v/out_proj) so the trigger word's embedding is used.

    python -m training.train_lora --base models/denoise-tiny --lora-out models/loras
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from tqdm import tqdm

from training.common import load_ckpt, lr_at, save_ckpt, setup
from training.data import STYLE_WORD, make_dataset
from training.train_unet import SCHEDULER_KW, encode_images, tokenize

# ----------------------------------------------------------------------------- config
BASE = "models/denoise-tiny"
OUT = "runs/lora"
LORA_OUT = "models/loras"
WEIGHT_NAME = "outline-style.safetensors"
STEPS = 1200
# attention alone barely draws outlines on 16x16 latents (a 500-step attention-only run added 0.8 %
# dark pixels): outlines are a local texture, so the LoRA also adapts the ResNet convolutions
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2"]
BATCH = 32
LR = 2e-3
RANK = 8
N_TRAIN = 3000
BF16 = True
CKPT_EVERY = 100
SEED = 3


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default=BASE)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--lora-out", default=LORA_OUT)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--lr", type=float, default=LR)
    ap.add_argument("--rank", type=int, default=RANK)
    ap.add_argument("--n-train", type=int, default=N_TRAIN)
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    dev = setup(a.device, a.threads, SEED)
    os.makedirs(a.out, exist_ok=True)
    use_bf16 = BF16 and not a.no_bf16
    ck = load_ckpt(os.path.join(a.out, "ckpt.pt"))
    if ck and ck["step"] >= a.steps and os.path.exists(os.path.join(a.out, "DONE")):
        print("already trained:", a.lora_out)
        return a.lora_out
    pipe = StableDiffusionPipeline.from_pretrained(a.base, safety_checker=None).to(dev)
    unet, te = pipe.unet, pipe.text_encoder
    for m in (unet, te, pipe.vae):
        m.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=a.rank, lora_alpha=a.rank, init_lora_weights="gaussian",
                                target_modules=UNET_TARGETS))
    # peft's own injector, not transformers' te.add_adapter: that one refuses to run unless
    # peft is at least the version its release names, which PyPI may not have yet.
    inject_adapter_in_model(LoraConfig(r=a.rank, lora_alpha=a.rank, init_lora_weights="gaussian",
                                       target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]), te)
    params = [p for m in (unet, te) for p in m.parameters() if p.requires_grad]
    print(f"lora params {sum(p.numel() for p in params)/1e3:.1f}k")
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    step = 0
    if ck:
        set_peft_model_state_dict(unet, ck["unet"]); set_peft_model_state_dict(te, ck["te"])
        opt.load_state_dict(ck["opt"]); step = ck["step"]
        print("resumed at step", step)

    path = os.path.join(a.out, f"data_{a.n_train}.pt")
    if os.path.exists(path):
        data = torch.load(path, weights_only=True)
    else:
        imgs, caps, _ = make_dataset(a.n_train, SEED, outline=True, progress=True)
        data = {"latents": encode_images(pipe.vae, imgs, bf16=use_bf16),
                "ids": tokenize(pipe.tokenizer, caps).to(torch.int16), "captions": caps}
        torch.save(data, path)
    print("example caption:", data["captions"][0])
    lat, ids = data["latents"], data["ids"].long()
    acp = DDPMScheduler(**SCHEDULER_KW).alphas_cumprod.to(dev)
    g = torch.Generator().manual_seed(SEED + step)
    unet.train(); te.train()
    pbar = tqdm(range(step, a.steps), initial=step, total=a.steps, desc="lora", mininterval=10)
    for step in pbar:
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, a.steps, a.lr, warmup=min(50, a.steps // 10))
        idx = torch.randint(0, len(lat), (a.batch,), generator=g)
        x0 = lat[idx].float().to(dev)
        noise = torch.randn(x0.shape, generator=g).to(dev)
        t = torch.randint(0, 1000, (a.batch,), generator=g).to(dev)
        ab = acp[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            h = te(ids[idx].to(dev))[0]
            pred = unet(xt, t, encoder_hidden_states=h).sample.float()
        loss = F.mse_loss(pred, v)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 10 == 0:
            pbar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % CKPT_EVERY == 0 or step + 1 == a.steps:
            save_ckpt(os.path.join(a.out, "ckpt.pt"), unet=get_peft_model_state_dict(unet),
                      te=get_peft_model_state_dict(te), opt=opt.state_dict(), step=step + 1)
    os.makedirs(a.lora_out, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        a.lora_out, unet_lora_layers=get_peft_model_state_dict(unet),
        text_encoder_lora_layers=get_peft_model_state_dict(te), weight_name=WEIGHT_NAME,
        safe_serialization=True)
    meta = {"trigger_words": [STYLE_WORD], "base_model": "denoise-tiny",
            "description": "Thick black outlines around every shape (white outline on black shapes). "
                           f"Start the prompt with '{STYLE_WORD}', e.g. 'an {STYLE_WORD} red circle on a white background'.",
            "rank": a.rank, "steps": a.steps, "unet_targets": UNET_TARGETS, "recommended_weight": 1.0}
    json.dump(meta, open(os.path.join(a.lora_out, WEIGHT_NAME.replace(".safetensors", ".json")), "w"), indent=2)
    open(os.path.join(a.out, "DONE"), "w").write(str(a.steps))
    print("saved", os.path.join(a.lora_out, WEIGHT_NAME))
    return a.lora_out


if __name__ == "__main__":
    main()
