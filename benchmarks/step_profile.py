"""Where a training step's time and FLOPs go, by model part: labels around modules, backward included.

Categories: attention (Attention), MLP (Mlp), block norm/AdaLN (the rest of DiTBlock), lifting
(DepthLifting), patch embed/unpatchify/final (PatchEmbed3D, FinalLayer, HybridViT3D.unpatchify),
stem + refine head (the denoiser's full-resolution 3D conv heads), X-ray encoder (XrayEncoder),
physics loss/projector (the DRR loss's Projector), optimizer (AdamW step + zero_grad) and other
(losses, noising, conditioning, gradient accumulation, Python between ops).

How: forward pre/post hooks (`Scopes`) open a label around each categorised module, so every forward
op sits under its innermost label, and each label records the span of autograd sequence numbers handed
out during its forward. Backward runs outside those scopes, but every backward node has the sequence
number it was created with: it belongs to the innermost span holding that number, i.e. to the module
whose forward created it. Time (`attribute`): under torch.profiler the labels are `record_function`s
("hvc::<category>"); each "autograd::engine::evaluate_function: XBackward" event carries node X's
sequence number; self times (CPU; device time on CUDA) are summed per category, so nothing counts
twice. FLOPs: `Scopes` entered as a dispatch mode with FlopCounterMode's formulas, a backward op
credited through `torch._C._current_autograd_node()` (FlopCounterMode's own per-module split is not
usable: in backward it also credits modules that are already done).
"""
from __future__ import annotations

import torch
from torch.autograd import DeviceType
from torch.utils._python_dispatch import TorchDispatchMode

CATEGORIES = ["attention", "MLP", "block norm/AdaLN", "lifting", "patch embed/unpatchify/final", "stem + refine head",
              "X-ray encoder", "physics loss/projector", "optimizer", "other"]


def flop_mapping() -> dict:
    """FlopCounterMode custom_mapping for the CPU fused attention, which torch's registry leaves at 0 FLOPs."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def fwd(q, k, v, *args, out_shape=None, **kw):
        return sdpa_flop_count(q, k, v)

    def bwd(grad_out, q, k, v, *args, out_shape=None, **kw):
        return sdpa_backward_flop_count(grad_out, q, k, v)

    return {aten._scaled_dot_product_flash_attention_for_cpu: fwd,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: bwd}


def module_categories(model: torch.nn.Module) -> dict[str, str]:
    """Dotted module path (as in named_modules) → profile category, for the modules that get a label."""
    from hybrid_vit_cascade.models.denoiser import Attention, DiTBlock, FinalLayer, Mlp, PatchEmbed3D
    from hybrid_vit_cascade.models.encoder2d import XrayEncoder
    from hybrid_vit_cascade.models.lifting import DepthLifting

    by_class = {Attention: "attention", Mlp: "MLP", DiTBlock: "block norm/AdaLN", DepthLifting: "lifting",
                PatchEmbed3D: "patch embed/unpatchify/final", FinalLayer: "patch embed/unpatchify/final",
                XrayEncoder: "X-ray encoder"}
    out = {}
    for name, m in model.named_modules():
        if type(m) in by_class:
            out[name] = by_class[type(m)]
        elif name.split(".")[:2] in (["denoiser", "stem"], ["denoiser", "refine"]):
            # Every submodule too: the denoiser may call the heads' parts one by one (checkpointed per half).
            out[name] = "stem + refine head"
    return out


class Scopes(TorchDispatchMode):
    """Category labels around the categorised modules (forward pre/post hooks), the physics loss's
    projector and unpatchify, with the span of autograd sequence numbers each forward created.

    Entered as a dispatch mode it adds every counted op's FLOPs to the category running it: a forward op
    its innermost label, a backward op the label whose span holds the node being evaluated. With
    `record`, each label is also a profiler `record_function` ("hvc::<category>").
    """

    def __init__(self, model: torch.nn.Module, labels: dict[str, str], registry: dict, record: bool = False):
        from hybrid_vit_cascade.geometry.projector import Projector

        super().__init__()
        self.registry, self.record = registry, record
        self.flops = dict.fromkeys(CATEGORIES, 0)
        self.stack: list[tuple[str, int, object]] = []  # open labels: (category, first sequence nr, record_function)
        self.spans: list[tuple[int, int, str]] = []  # closed labels: [first, end) sequence numbers, category
        mods = dict(model.named_modules())
        hooks = [(mods[p], c) for p, c in labels.items()]
        self.handles = [h for m, c in hooks for h in (m.register_forward_pre_hook(lambda *_, c=c: self.enter(c)),
                                                      m.register_forward_hook(lambda *_: self.leave()))]
        # The physics loss's projector is built by the harness, outside the model: label it by class, globally.
        glob, cat = torch.nn.modules.module, "physics loss/projector"
        self.handles += [
            glob.register_module_forward_pre_hook(lambda m, a: self.enter(cat) if isinstance(m, Projector) else None),
            glob.register_module_forward_hook(lambda m, a, o: self.leave() if isinstance(m, Projector) else None)]
        den, orig = model.denoiser, model.denoiser.unpatchify

        def unpatchify(x):  # a method, not a module: wrapped on this instance only
            self.enter("patch embed/unpatchify/final")
            try:
                return orig(x)
            finally:
                self.leave()

        den.unpatchify = unpatchify
        self._restore = lambda: den.__dict__.pop("unpatchify", None)

    def enter(self, cat: str) -> None:
        """A labelled forward starts."""
        rf = torch.profiler.record_function(f"hvc::{cat}") if self.record else None
        if rf is not None:
            rf.__enter__()
        self.stack.append((cat, torch._C._autograd._get_sequence_nr(), rf))

    def leave(self) -> None:
        """The innermost labelled forward ends."""
        cat, first, rf = self.stack.pop()
        self.spans.append((first, torch._C._autograd._get_sequence_nr(), cat))
        if rf is not None:
            rf.__exit__(None, None, None)

    def of_node(self, seq: int) -> str | None:
        """Category of the autograd node with sequence number seq: its innermost span's (None outside all)."""
        inside = [sp for sp in self.spans if sp[0] <= seq < sp[1]]
        return min(inside, key=lambda sp: sp[1] - sp[0])[2] if inside else None

    def remove(self) -> None:
        """Remove every hook and the unpatchify wrapper."""
        for h in self.handles:
            h.remove()
        self._restore()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.registry.get(func._overloadpacket)
        if formula is not None:
            node = torch._C._current_autograd_node()
            if self.stack:  # forward, or a checkpointed forward recomputed in backward
                cat = self.stack[-1][0]
            else:
                cat = (self.of_node(node._sequence_nr()) if node is not None else None) or "other"
            self.flops[cat] += formula(*args, **kwargs, out_val=out)
        return out


def attribute(events, scopes: Scopes, device_time: bool) -> dict[str, float]:
    """Self time (µs) per category of profiler events (module docstring)."""
    key = "self_device_time_total" if device_time else "self_cpu_time_total"
    out = dict.fromkeys(CATEGORIES, 0.0)
    stack = [(e, "other") for e in events  # device events (CUDA kernels) are already in their CPU op's device time
             if e.cpu_parent is None and e.device_type == DeviceType.CPU]
    while stack:
        e, cat = stack.pop()
        if e.name.startswith("hvc::") and e.name[5:] in out:
            cat = e.name[5:]
        elif e.name.startswith("autograd::engine::evaluate_function"):
            # A node created outside every label (losses, noising, AccumulateGrad) stays "other".
            cat = (scopes.of_node(e.sequence_nr) if e.sequence_nr >= 0 else None) or cat
        elif e.name.startswith("Optimizer."):
            cat = "optimizer"
        out[cat] += getattr(e, key)
        stack += [(c, cat) for c in e.cpu_children]
    return out
