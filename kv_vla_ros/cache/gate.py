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


def chunk_features(states: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Pool one chunk's keys and values of every layer into a vector.

    Args:
        states: per layer ``(keys, values)``, each ``[batch, kv_heads, tokens, head_dim]``.
    Returns:
        ``[layers * 2 * head_dim]`` float32: mean over batch, heads and tokens of K and of V,
        concatenated over layers.
    """
    parts = [t for kv in states for t in kv]
    if all(t.shape[:-1] == parts[0].shape[:-1] for t in parts):
        # One reduction over all layers (the cache calls this on every control step).
        return torch.cat(parts, dim=-1).float().mean(dim=(0, 1, 2))
    return torch.cat([t.float().mean(dim=(0, 1, 2)) for t in parts])


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
    """`ChunkGate.forward` for one stream, chunk by chunk, in functional matrix-vector ops.

    At this size the modules' per-call overhead (the LSTM's above all) is most of the cost, and
    the cache scores a chunk on every control step: this path is about 4x cheaper. It holds
    references to the gate's parameters (not copies), so in-place updates show at once.
    """

    def __init__(self, gate: ChunkGate) -> None:
        ln, fc1, _, fc2 = gate.aggregate
        lstm = gate.lstm
        self.hidden = gate.config.hidden
        self.ln = (ln.normalized_shape, ln.weight, ln.bias, ln.eps)
        self.fc = (fc1.weight, fc1.bias, fc2.weight, fc2.bias)
        self.lstm = (lstm.weight_ih_l0, lstm.bias_ih_l0, lstm.weight_hh_l0, lstm.bias_hh_l0)
        self.head = (gate.head.weight[0], gate.head.bias)

    @torch.no_grad()
    def __call__(self, features: torch.Tensor, state=None):
        """Score chunks in order.

        Args:
            features: ``[chunks, in_dim]``.
            state: ``(h, c)``, each ``[1, 1, hidden]`` (the `nn.LSTM` layout), or ``None``.
        Returns:
            ``(scores [chunks] in [0, 1], state)``: ``forward(features[None], state)`` up to
            float rounding.
        """
        w1, b1, w2, b2 = self.fc
        w_ih, b_ih, w_hh, b_hh = self.lstm
        head_w, head_b = self.head
        if state is None:
            h = c = features.new_zeros(self.hidden)
        else:
            h, c = state[0].reshape(-1), state[1].reshape(-1)
        n = self.hidden
        logits = []
        for t in range(features.shape[0]):
            x = F.layer_norm(features[t], *self.ln)
            x = torch.addmv(b2, w2, F.gelu(torch.addmv(b1, w1, x)))  # [hidden]
            gates = torch.addmv(b_ih, w_ih, x) + torch.addmv(b_hh, w_hh, h)  # [4 hidden]
            act = torch.sigmoid(gates)  # nn.LSTM's gate order: input, forget, cell (tanh), output
            c = act[n:2 * n] * c + act[:n] * torch.tanh(gates[2 * n:3 * n])
            h = act[3 * n:] * torch.tanh(c)
            logits.append(torch.dot(head_w, h))
        logits = logits[0].unsqueeze(0) if len(logits) == 1 else torch.stack(logits)
        return torch.sigmoid(logits + head_b), (h.view(1, 1, -1), c.view(1, 1, -1))
