"""The residual stream split into parts, with TransformerLens's labels: the analysis half of
`ActivationCache` (activation_cache.py), as a mixin that reads the cached activations through
`self[...]`, `self.cache_dict`, `self.model` and `self.has_batch_dim`.

- `accumulated_resid`: the stream itself after each stage ('0_pre', '0_mid', ..., 'final_post');
- `decompose_resid`: what each layer wrote ('embed', 'pos_embed', '0_attn_out', '0_mlp_out', ...);
- `stack_head_results` ('L0H1', each head's z @ W_O, b_O not included), `stack_neuron_results`
  ('L0N5', each neuron's post * W_out row, b_out not included), `get_full_resid_decomposition`
  (heads, neurons or MLP layers, 'embed', 'pos_embed', and 'bias': the b_O and b_out not in the
  other rows), whose rows sum exactly to the residual stream entering `layer`;
- `apply_ln_to_stack`: each part centred and divided by the *cached* LayerNorm scale of the whole
  stream (the final LayerNorm's for layer=n_layers), no LayerNorm weight or bias, as in
  TransformerLens (a model without LayerNorm is returned unchanged); `accumulated_resid(apply_ln=
  True)` at the final layer instead runs the final LayerNorm afresh on each stage (the logit lens);
- `logit_attrs`: the stack, after apply_ln_to_stack, dotted with W_U's columns for `tokens`
  (minus those for `incorrect_tokens`).
Stacks are [component, batch, pos, d_model]; `pos_slice` / `batch_slice` take `utils.Slice` inputs.
Where the layer is 0 the remainder is the embeddings' stream (resid_pre of layer 0).
"""
from __future__ import annotations

import logging

import torch

from .utils import ShapeError, Slice

log = logging.getLogger(__name__)


class ResidDecomposition:
    """Mixin: the decompositions of ActivationCache (which holds the activations and looks them up)."""

    # ---- helpers about the model -----------------------------------------------------------------

    @property
    def _n_layers(self) -> int:
        return self.model.cfg.n_layers

    @property
    def _uses_ln(self) -> bool:
        cfg = self.model.cfg
        return getattr(cfg, "normalization", getattr(cfg, "normalization_type", None)) is not None

    def _layer(self, layer) -> int:
        """None and -1 mean n_layers (the unembedding's input), as in TransformerLens."""
        if layer is None or layer == -1:
            return self._n_layers
        if not isinstance(layer, int) or not 0 <= layer <= self._n_layers:
            raise ValueError(f"layer={layer!r}: use 0..{self._n_layers} (the input to that layer; "
                             f"{self._n_layers} or -1 or None for the unembedding)")
        return layer

    def _check_mlp_input(self, layer: int, mlp_input: bool):
        if mlp_input and (self.model.cfg.attn_only or layer >= self._n_layers):
            raise ShapeError(f"mlp_input=True needs an MLP at layer {layer}: this model "
                             + ("is attention-only" if self.model.cfg.attn_only else f"has {self._n_layers} layers"))

    def _check_additive(self, what: str):
        """A doubled-residual model's stream is not the sum of what its layers wrote: refuse."""
        if getattr(self.model.cfg, "residual_doubled", False):
            raise ValueError(f"{what} splits the residual stream into the sum of what each layer wrote, but this model "
                             "doubles its stream in every block (residual_doubled=True, the induction notebook's "
                             "quirk), so the parts would not add up: analyse a model without residual_doubled")

    def _resid_input(self, layer: int, mlp_input: bool) -> torch.Tensor:
        """The residual stream entering layer `layer`'s attention (or MLP); n_layers: the unembedding."""
        if mlp_input:
            return self["resid_mid", layer]
        if layer == self._n_layers:
            return self["resid_post", self._n_layers - 1]
        return self["resid_pre", layer]

    def _empty_stack(self, pos_slice: Slice, width: int | None = None) -> torch.Tensor:
        like = pos_slice.apply(self._resid_input(0, False), dim=-2)
        shape = like.shape if width is None else like.shape[:-1] + (width,)
        return like.new_zeros((0, *shape))

    # ---- residual stream stacks ------------------------------------------------------------------

    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice=None, mlp_input: bool = False, return_labels: bool = False):
        """The residual stream after each stage up to the input of `layer`: [stage, *batch_pos, d_model].

        Stages are resid_pre of each layer below `layer` ('{l}_pre'), with incl_mid also resid_mid
        ('{l}_mid'; attention-only models have none), with mlp_input resid_mid of `layer` itself,
        and at layer=n_layers the final resid_post ('final_post'). apply_ln: at the final layer the
        final LayerNorm is run afresh on each stage (its weight and bias included: `@ W_U + b_U`
        then gives the logit lens); at other layers the cached scale is used (apply_ln_to_stack).
        """
        pos_slice = Slice(pos_slice)
        layer = self._layer(layer)
        self._check_mlp_input(layer, mlp_input)
        has_mid = not self.model.cfg.attn_only
        parts, labels = [], []
        for l in range(layer + 1):
            if l == self._n_layers:
                parts.append(self["resid_post", self._n_layers - 1])
                labels.append("final_post")
                continue
            parts.append(self["resid_pre", l])
            labels.append(f"{l}_pre")
            if has_mid and ((incl_mid and l < layer) or (mlp_input and l == layer)):
                parts.append(self["resid_mid", l])
                labels.append(f"{l}_mid")
        stack = torch.stack([pos_slice.apply(p, dim=-2) for p in parts])
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice,
                                           has_batch_dim=self.has_batch_dim, recompute_ln=layer == self._n_layers)
        return (stack, labels) if return_labels else stack

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice=None, incl_embeds: bool = True,
                        return_labels: bool = False):
        """What was written to the residual stream before the input of `layer`: [part, *batch_pos, d_model].

        Parts: 'embed', 'pos_embed' (incl_embeds), then '{l}_attn_out' and '{l}_mlp_out' of each
        layer below (mode 'attn' / 'mlp' keeps one kind), with mlp_input also `layer`'s attn_out.
        attn_out and mlp_out include b_O and b_out, so the parts sum to the stream exactly.
        """
        if mode not in ("all", "mlp", "attn"):
            raise ValueError(f"mode={mode!r}: use 'all', 'mlp' or 'attn'")
        self._check_additive("decompose_resid")
        pos_slice = Slice(pos_slice)
        layer = self._layer(layer)
        self._check_mlp_input(layer, mlp_input)
        incl_attn, incl_mlp = mode != "mlp", mode != "attn" and not self.model.cfg.attn_only
        parts, labels = [], []
        if incl_embeds:
            for name in ("embed", "pos_embed"):
                if f"hook_{name}" in self.cache_dict:
                    parts.append(self.cache_dict[f"hook_{name}"])
                    labels.append(name)
        for l in range(layer):
            if incl_attn:
                parts.append(self["attn_out", l])
                labels.append(f"{l}_attn_out")
            if incl_mlp:
                parts.append(self["mlp_out", l])
                labels.append(f"{l}_mlp_out")
        if mlp_input and incl_attn:
            parts.append(self["attn_out", layer])
            labels.append(f"{layer}_attn_out")
        stack = (torch.stack([pos_slice.apply(p, dim=-2) for p in parts]) if parts
                 else self._empty_stack(pos_slice))
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def _head_results_missing(self) -> list[int]:
        ndim = 4 if self.has_batch_dim else 3
        missing = []
        for l in range(self._n_layers):
            result = self.cache_dict.get(f"blocks.{l}.attn.hook_result")
            if not (isinstance(result, torch.Tensor) and result.ndim == ndim
                    and result.shape[-2] == self.model.cfg.n_heads):
                missing.append(l)
        return missing

    def _fill_head_results(self, layers: list[int]):
        for l in layers:
            z = self["z", l]  # [*batch, pos, head, d_head]
            W_O = self.model.blocks[l].attn.W_O  # [head, d_head, d_model]
            self.cache_dict[f"blocks.{l}.attn.hook_result"] = torch.einsum("...hd,hdm->...hm", z, W_O.to(z))

    def compute_head_results(self):
        """Cache each head's output z @ W_O as blocks.L.attn.hook_result [*batch, pos, head, d_model],
        where it is missing; attn_out is their sum plus b_O."""
        missing = self._head_results_missing()
        if not missing:
            log.warning("Tried to compute head results when they were already cached")
        self._fill_head_results(missing)

    def stack_head_results(self, layer: int = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice=None, apply_ln: bool = False):
        """Each head's output in layers below `layer`: [n_heads * layer (+1), *batch_pos, d_model],
        labels 'L{l}H{h}'; incl_remainder adds 'remainder', the rest of the stream entering `layer`."""
        pos_slice = Slice(pos_slice)
        layer = self._layer(layer)
        self._fill_head_results(self._head_results_missing())
        parts, labels = [], []
        for l in range(layer):
            result = pos_slice.apply(self["result", l], dim=-3)  # [*batch_pos, head, d_model]
            parts.append(result.movedim(-2, 0))
            labels.extend(f"L{l}H{h}" for h in range(self.model.cfg.n_heads))
        stack = torch.cat(parts) if parts else self._empty_stack(pos_slice)
        if incl_remainder:
            rest = pos_slice.apply(self._resid_input(layer, False), dim=-2) - stack.sum(0)
            stack = torch.cat([stack, rest[None]])
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_activation(self, activation_name: str, layer: int = -1, sublayer_type: str | None = None) -> torch.Tensor:
        """One activation of every layer below `layer`, stacked: [layer, ...]."""
        layer = self._layer(layer)
        return torch.stack([self[activation_name, l, sublayer_type] for l in range(layer)])

    def get_neuron_results(self, layer: int, neuron_slice=None, pos_slice=None,
                           project_output_onto: torch.Tensor | None = None) -> torch.Tensor:
        """Each neuron's output post * W_out[neuron] in `layer`: [*batch_pos, neuron, d_model] (the
        last dimension is num_outputs, or gone, when projected onto a [d_model(, n)] direction)."""
        if self.model.cfg.attn_only:
            raise ValueError("this model is attention-only: it has no MLP neurons")
        neuron_slice, pos_slice = Slice(neuron_slice), Slice(pos_slice)
        acts = neuron_slice.apply(pos_slice.apply(self["post", layer], dim=-2), dim=-1)  # [*batch_pos, neuron]
        W_out = neuron_slice.apply(self.model.blocks[layer].mlp.W_out, dim=0)  # [neuron, d_model]
        if project_output_onto is None:
            return acts[..., None] * W_out
        projected = W_out @ project_output_onto  # [neuron(, n)]
        return acts * projected if project_output_onto.ndim == 1 else acts[..., None] * projected

    def stack_neuron_results(self, layer: int, pos_slice=None, neuron_slice=None, return_labels: bool = False,
                             incl_remainder: bool = False, apply_ln: bool = False,
                             project_output_onto: torch.Tensor | None = None, mlp_input: bool = False):
        """Each neuron's output in layers below `layer`: [neurons (+1), *batch_pos, d_model], labels
        'L{l}N{n}'. incl_remainder adds the rest of the stream entering `layer` (its MLP with
        mlp_input, whose LayerNorm scale apply_ln then uses). project_output_onto [d_model(, n)]
        projects each row without forming [neuron, d_model] per position."""
        if self.model.cfg.attn_only:
            raise ValueError("this model is attention-only: it has no MLP neurons")
        layer = self._layer(layer)
        self._check_mlp_input(layer, mlp_input)
        pos_slice = Slice(pos_slice)
        neuron_slice = Slice.unwrap(neuron_slice)  # an int keeps its dimension here
        if neuron_slice.mode == "int":
            neuron_slice = Slice([neuron_slice.slice])
        project = project_output_onto
        squeeze = project is not None and project.ndim == 1
        if squeeze:
            project = project[:, None]
        scaled = apply_ln and self._uses_ln
        scale = self._ln_scale(layer, mlp_input, pos_slice) if scaled else None
        parts = []
        for l in range(layer):
            acts = neuron_slice.apply(pos_slice.apply(self["post", l], dim=-2), dim=-1)  # [*batch_pos, neuron]
            W_out = neuron_slice.apply(self.model.blocks[l].mlp.W_out, dim=0)  # [neuron, d_model]
            # LayerNorm of acts * W_out with the cached scale s is acts / s * (W_out - mean W_out):
            # centring is linear, so it moves onto the weights and stays cheap when projected.
            W_eff = W_out - W_out.mean(-1, keepdim=True) if scaled else W_out
            if project is not None:
                W_eff = W_eff @ project  # [neuron, n]
            if scaled:
                acts = acts / scale
            parts.append((acts[..., None] * W_eff).movedim(-2, 0))  # [neuron, *batch_pos, d_model or n]
        d_mlp = self.model.cfg.d_mlp
        labels = [f"L{l}N{n}" for l in range(layer) for n in neuron_slice.indices(d_mlp).tolist()]
        width = None if project is None else project.shape[-1]
        stack = torch.cat(parts) if parts else self._empty_stack(pos_slice, width)
        if incl_remainder:
            target = pos_slice.apply(self._resid_input(layer, mlp_input), dim=-2)[None]
            if scaled:
                target = self.apply_ln_to_stack(target, layer, mlp_input=mlp_input, pos_slice=pos_slice)
            if project is not None:
                target = target @ project
            stack = torch.cat([stack, target - stack.sum(0, keepdim=True)])
            labels.append("remainder")
        if squeeze:
            stack = stack.squeeze(-1)
        return (stack, labels) if return_labels else stack

    # ---- LayerNorm and logits --------------------------------------------------------------------

    def _ln_scale(self, layer: int, mlp_input: bool, pos_slice: Slice, batch_slice: Slice | None = None):
        ln = "ln_final" if layer == self._n_layers else f"blocks.{layer}.ln{2 if mlp_input else 1}"
        key = f"{ln}.hook_scale"
        if key not in self.cache_dict:
            raise KeyError(f"apply_ln needs the cached LayerNorm scale {key!r}: cache it (names_filter) and retry")
        scale = pos_slice.apply(self.cache_dict[key], dim=-2)  # [*batch_pos, 1]
        if batch_slice is not None and self.has_batch_dim:
            scale = batch_slice.apply(scale, dim=0)
        return scale

    def apply_ln_to_stack(self, residual_stack: torch.Tensor, layer: int | None = None, mlp_input: bool = False,
                          pos_slice=None, batch_slice=None, has_batch_dim: bool = True,
                          recompute_ln: bool = False) -> torch.Tensor:
        """Treat each part of `residual_stack` [part, *batch_pos, d_model] as input to `layer`'s
        LayerNorm (ln2 with mlp_input; the final one for layer=n_layers): centre it and divide by the
        scale cached for the whole stream. No LayerNorm weight or bias is applied (TransformerLens's
        convention); a model without LayerNorm gets the stack back unchanged. pos_slice is taken to
        be applied to the stack already and is applied to the scale; batch_slice to both.
        recompute_ln at the final layer: run the final LayerNorm itself on each part instead."""
        if not self._uses_ln:
            return residual_stack
        pos_slice, batch_slice = Slice(pos_slice), Slice(batch_slice)
        layer = self._layer(layer)
        if mlp_input and layer == self._n_layers:
            raise ShapeError("mlp_input=True has no meaning at the final layer (the unembedding)")
        if has_batch_dim:
            residual_stack = batch_slice.apply(residual_stack, dim=1)
        if recompute_ln and layer == self._n_layers:  # each row normalised on its own: any layout will do
            rows = residual_stack.reshape(-1, 1, residual_stack.shape[-1])  # [rows, 1, d_model]
            return self.model.ln_final(rows).reshape(residual_stack.shape)
        centred = residual_stack - residual_stack.mean(-1, keepdim=True)
        return centred / self._ln_scale(layer, mlp_input, pos_slice, batch_slice)

    def logit_attrs(self, residual_stack: torch.Tensor, tokens, incorrect_tokens=None, pos_slice=None,
                    batch_slice=None, has_batch_dim: bool = True) -> torch.Tensor:
        """Each part's contribution to the logit of `tokens` (minus `incorrect_tokens`): the stack
        after apply_ln_to_stack (final layer) dotted with W_U's columns -> [part, *batch_pos].

        As in TransformerLens the final LayerNorm's w and b and b_U are not applied (fold them in
        first for exact logits); tokens: an int, a [batch] tensor (one per example), or [batch, pos].
        """
        batch_slice = Slice(batch_slice)
        directions = self.model.tokens_to_residual_directions(tokens)
        if incorrect_tokens is not None:
            if torch.as_tensor(tokens).shape != torch.as_tensor(incorrect_tokens).shape:
                raise ValueError(f"tokens {tuple(torch.as_tensor(tokens).shape)} and incorrect_tokens "
                                 f"{tuple(torch.as_tensor(incorrect_tokens).shape)} must have the same shape")
            directions = directions - self.model.tokens_to_residual_directions(incorrect_tokens)
        scaled = self.apply_ln_to_stack(residual_stack, -1, pos_slice=pos_slice, batch_slice=batch_slice,
                                        has_batch_dim=has_batch_dim)
        if (has_batch_dim and batch_slice.mode != "int" and scaled.ndim == 4 and directions.ndim == 2
                and directions.shape[0] == scaled.shape[1]):
            directions = directions.unsqueeze(-2)  # one direction per example, the same at every position
        return (scaled * directions).sum(-1)

    def get_full_resid_decomposition(self, layer: int | None = None, mlp_input: bool = False,
                                     expand_neurons: bool = True, apply_ln: bool = False, pos_slice=None,
                                     return_labels: bool = False, project_output_onto: torch.Tensor | None = None):
        """The stream entering `layer` split into every head ('L0H0' ...), every neuron ('L0N0' ...;
        or each MLP layer '0_mlp_out' without expand_neurons), 'embed', 'pos_embed' and 'bias' (the
        b_O, and the b_out not inside the MLP rows): [part, *batch_pos, d_model]; the rows sum to
        the stream. apply_ln: each row through apply_ln_to_stack; project_output_onto [d_model(, n)]:
        each row projected (last dimension n, or gone for a vector)."""
        self._check_additive("get_full_resid_decomposition")
        layer = self._layer(layer)
        self._check_mlp_input(layer, mlp_input)
        pos_slice = Slice(pos_slice)
        project = project_output_onto

        def finish(stack):  # LayerNorm, then the projection
            if apply_ln:
                stack = self.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
            return stack if project is None else stack @ project

        heads, labels = self.stack_head_results(layer + int(mlp_input), pos_slice=pos_slice, return_labels=True)
        parts = [finish(heads)]
        if not self.model.cfg.attn_only and layer > 0:
            if expand_neurons:
                neurons, neuron_labels = self.stack_neuron_results(
                    layer, pos_slice=pos_slice, return_labels=True, apply_ln=apply_ln,
                    project_output_onto=project, mlp_input=mlp_input)
                parts.append(neurons)
                labels += neuron_labels
            else:
                mlps, mlp_labels = self.decompose_resid(layer, mlp_input=mlp_input, mode="mlp", pos_slice=pos_slice,
                                                        incl_embeds=False, return_labels=True)
                parts.append(finish(mlps))
                labels += mlp_labels
        for name in ("embed", "pos_embed"):
            if f"hook_{name}" in self.cache_dict:
                parts.append(finish(pos_slice.apply(self.cache_dict[f"hook_{name}"], dim=-2)[None]))
                labels.append(name)
        # Without expand_neurons the MLP rows already hold b_out.
        bias = self.model.accumulated_bias(layer, mlp_input, include_mlp_biases=expand_neurons)  # [d_model]
        like = pos_slice.apply(self._resid_input(layer, mlp_input), dim=-2)
        parts.append(finish(bias.to(like).expand((1, *like.shape))))
        labels.append("bias")
        stack = torch.cat(parts)
        return (stack, labels) if return_labels else stack
