"""The chunk gate: pooled K/V of a chunk -> MLP -> LSTM -> linear -> sigmoid utility in [0, 1].

Tiny next to the backbone. Saved as safetensors with its dimensions in the file's metadata, so a
gate loads without pickle and is checked against the backbone it is paired with.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

GATE_FILE = "gate.safetensors"
SQRT_HALF = 0.5 ** 0.5


def chunk_features(states: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Pool one chunk's keys and values of every layer into a vector.

    Args:
        states: per layer ``(keys, values)``, each ``[batch, kv_heads, tokens, head_dim]``.
    Returns:
        ``[layers * 2 * head_dim]`` float32: mean over batch, heads and tokens of K and of V,
        concatenated over layers.
    """
    parts = [t for kv in states for t in kv]
    try:  # one reduction over all layers (the cache calls this on every control step)
        joined = torch.cat(parts, dim=-1)
    except RuntimeError:  # layers with other head counts or lengths
        return torch.cat([t.mean(dim=(0, 1, 2), dtype=torch.float32) for t in parts])
    # a sum and a scale cost half a multi-dimensional mean at this size
    return joined.sum(dim=(0, 1, 2), dtype=torch.float32).mul_(1.0 / joined[..., 0].numel())


def gate_input_dim(num_layers: int, head_dim: int) -> int:
    return num_layers * 2 * head_dim


@dataclass
class GateConfig:
    in_dim: int
    hidden: int = 64
    mlp_hidden: int = 128

    def __post_init__(self) -> None:
        for name in ("in_dim", "hidden", "mlp_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive int, got {value!r}")


class ChunkGate(nn.Module):
    """Recurrent utility scorer over a sequence of chunk feature vectors."""

    def __init__(self, config: GateConfig) -> None:
        super().__init__()
        self.config = config
        # LayerNorm first: pooled K/V scales differ a lot between backbones and layers.
        self.aggregate = nn.Sequential(
            nn.LayerNorm(config.in_dim),
            nn.Linear(config.in_dim, config.mlp_hidden),
            nn.GELU(),
            nn.Linear(config.mlp_hidden, config.hidden),
        )
        self.lstm = nn.LSTM(config.hidden, config.hidden, batch_first=True)
        self.head = nn.Linear(config.hidden, 1)

    def forward(self, features: torch.Tensor, state=None):
        """Score chunks in order.

        Args:
            features: ``[batch, chunks, in_dim]``.
            state: the LSTM ``(h, c)`` carried from earlier chunks, or ``None`` at episode start.
        Returns:
            ``(scores [batch, chunks] in [0, 1], state)``.
        """
        logits, state = self.logits(features, state)
        return torch.sigmoid(logits), state

    def logits(self, features: torch.Tensor, state=None):
        """Pre-sigmoid scores ``[batch, chunks]`` (train with a logit loss) and the new state."""
        hidden, state = self.lstm(self.aggregate(features), state)
        return self.head(hidden).squeeze(-1), state

    def scorer(self) -> "GateScorer":
        """The inference path for one stream (what the cache calls on every control step)."""
        return GateScorer(self)

    @classmethod
    def untrained(cls, in_dim: int, seed: int = 0, **kwargs) -> "ChunkGate":
        """A randomly initialised gate (the paper's released code never trained its gate)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(GateConfig(in_dim=in_dim, **kwargs))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, directory: str, filename: str = GATE_FILE) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, filename)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, path, metadata={"gate_config": json.dumps(asdict(self.config))})
        return path

    @classmethod
    def load(cls, path: str, expected_in_dim: int | None = None) -> "ChunkGate":
        """Load a gate file; ``ValueError`` names the file and the problem."""
        if os.path.isdir(path):
            path = os.path.join(path, GATE_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"gate: no gate file at {path}")
        try:
            from safetensors import safe_open

            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
            tensors = load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"gate: {path} is not a readable safetensors file ({exc})") from exc
        if "gate_config" not in meta:
            raise ValueError(f"gate: {path} has no 'gate_config' metadata")
        config = GateConfig(**json.loads(meta["gate_config"]))
        if expected_in_dim is not None and config.in_dim != expected_in_dim:
            raise ValueError(
                f"gate: in_dim {config.in_dim} of {path} does not match the backbone ({expected_in_dim} = "
                "layers x 2 x head_dim)"
            )
        gate = cls(config)
        try:
            gate.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"gate: {path} does not match the gate architecture ({exc})") from exc
        return gate.eval()


class GateScorer:
    """`ChunkGate.forward` for one stream, chunk by chunk, in as few tensor ops as the maths allows.

    At this size each op's fixed cost is most of the price, and the cache scores a chunk on every
    control step, so the linear maps that follow one another are folded into one: LayerNorm's
    affine into the first linear layer, the MLP's output layer into the LSTM's input weights, and
    GELU's scales into both (``F.gelu`` costs ten times its ``erf`` on a vector this short); one
    fused `torch.lstm_cell` does the recurrence. Equal to ``forward`` up to float rounding.

    A snapshot: it folds the gate's weights when built, so build a new one after changing the
    gate (the cache builds one per episode).
    """

    @torch.no_grad()
    def __init__(self, gate: ChunkGate) -> None:
        ln, fc1, _, fc2 = gate.aggregate
        lstm = gate.lstm
        self.hidden = gate.config.hidden
        # fc1(ln_w * x_hat + ln_b) = (fc1.W * ln_w) x_hat + (fc1.W ln_b + fc1.b)
        w1 = fc1.weight * ln.weight
        b1 = torch.addmv(fc1.bias, fc1.weight, ln.bias)
        # W_ih (W2 g + b2) + b_ih = (W_ih W2) g + (W_ih b2 + b_ih)
        w_x = lstm.weight_ih_l0 @ fc2.weight
        b_x = torch.addmv(lstm.bias_ih_l0, lstm.weight_ih_l0, fc2.bias)
        # exact GELU: gelu(y) = y/2 (1 + erf(y/sqrt2)) = (z + z erf(z)) / sqrt2 with z = y/sqrt2,
        # so fc1 is scaled by 1/sqrt2 and the next weights by 1/sqrt2: two ops (erf, addcmul)
        self.ln = (ln.normalized_shape, None, None, ln.eps)
        self.fc1 = (w1 * SQRT_HALF, b1 * SQRT_HALF)
        self.cell = (w_x * SQRT_HALF, lstm.weight_hh_l0.detach().clone(), b_x, lstm.bias_hh_l0.detach().clone())
        self.head = (gate.head.weight.detach()[0].clone(), gate.head.bias.detach().clone())  # [hidden], [1]

    def __call__(self, features: torch.Tensor, state=None):
        """Score chunks in order.

        Args:
            features: ``[chunks, in_dim]``.
            state: ``(h, c)``, each ``[1, hidden]`` (`torch.lstm_cell`'s layout), or ``None``.
        Returns:
            ``(scores [chunks] in [0, 1], state)``: ``forward(features[None], state)`` up to
            float rounding (``forward``'s state is this one with a leading layer dimension).
        """
        if torch.is_grad_enabled():  # the control loop runs under inference mode: no extra op there
            with torch.no_grad():
                return self(features, state)
        if state is None:
            state = (features.new_zeros(1, self.hidden),) * 2
        z = F.linear(F.layer_norm(features, *self.ln), *self.fc1)  # [chunks, mlp_hidden]: GELU input / sqrt2
        x = torch.addcmul(z, z, torch.erf(z))  # sqrt2 * GELU (the sqrt2 is in the next weights)
        if x.shape[0] == 1:
            state = hidden = torch.lstm_cell(x, state, *self.cell)
        else:
            rows = []
            for t in range(x.shape[0]):
                state = torch.lstm_cell(x[t:t + 1], state, *self.cell)
                rows.append(state[0])
            hidden = (torch.cat(rows),)
        head_w, head_b = self.head
        return torch.sigmoid(torch.addmv(head_b, hidden[0], head_w)), state
