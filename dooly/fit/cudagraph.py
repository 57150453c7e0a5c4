"""CUDA graphs as vLLM 0.32 runs them on a GPU host (execution "cudagraph"): which batches
replay a captured graph, and the token count the graph is padded to.

vLLM's default mode is FULL_AND_PIECEWISE. It captures graphs at a list of token counts
(`VllmConfig._set_cudagraph_sizes`, no speculative decoding, the "balanced" performance
mode): 1, 2, 4, then every 8 below 256, then every 16 up to the ceiling
min(2 * max_num_seqs, 512) (1024 on data-centre Blackwell), itself capped at
max_num_batched_tokens; max_num_batched_tokens and max_num_seqs are added when they fit
under it. At run time (`CudagraphDispatcher`) a batch of T <= ceiling tokens is padded to
the smallest captured size >= T: a uniform decode batch (every sequence one new token)
replays a FULL graph (the whole forward, attention included, one launch); any other batch
replays the PIECEWISE graphs (compiled pieces captured, attention run eagerly between
them). Above the ceiling nothing is padded and the pieces run without graphs.

So on such a host the token-driven units of a batch run at the padded count, and the
per-layer Python work of the step (a call per piece and per attention layer) vanishes
for FULL replays. Sequence-driven units (LM head, sampler) run on the real sequences:
vLLM computes logits outside the graph, for the scheduled requests only."""
from __future__ import annotations

import bisect
from dataclasses import dataclass

FULL, PIECEWISE, NONE = "full", "piecewise", "none"


def default_capture_sizes(max_num_seqs: int = 256, max_num_batched_tokens: int = 8192,
                          max_capture_size: int | None = None, blackwell: bool = False) -> tuple[int, ...]:
    """vLLM 0.32's default capture sizes for these serving settings (decode query length 1)."""
    if max_num_seqs < 1 or max_num_batched_tokens < 1:
        raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
    default_max = 1024 if blackwell else 512
    ceiling = min(2 * max_num_seqs, default_max) if max_capture_size is None else max_capture_size
    decode_sizes = [max_num_seqs] if max_capture_size is None and max_num_seqs <= ceiling else []
    ceiling = min(max_num_batched_tokens, ceiling)
    sizes = [s for s in (1, 2, 4) if s <= ceiling]
    if ceiling >= 8:
        sizes += range(8, min(ceiling + 1, 256), 8)
    if ceiling >= 256:
        sizes += range(256, ceiling + 1, 16)
    if max_num_batched_tokens <= ceiling:
        sizes.append(max_num_batched_tokens)
    sizes += [s for s in decode_sizes if s <= max_num_batched_tokens]
    return tuple(sorted(set(sizes)))


@dataclass(frozen=True)
class GraphPolicy:
    """The captured sizes of one engine configuration (ascending)."""
    sizes: tuple[int, ...]

    def __post_init__(self):
        if not self.sizes or list(self.sizes) != sorted(set(self.sizes)) or self.sizes[0] < 1:
            raise ValueError(f"sizes: expected ascending distinct positive token counts, got {self.sizes!r}")

    @classmethod
    def for_serving(cls, max_num_seqs: int = 256, max_num_batched_tokens: int = 8192,
                    **kw) -> "GraphPolicy":
        return cls(default_capture_sizes(max_num_seqs, max_num_batched_tokens, **kw))

    @property
    def ceiling(self) -> int:
        return self.sizes[-1]

    def padded(self, num_tokens: int) -> int:
        """The token count the engine runs a batch of `num_tokens` at."""
        if num_tokens > self.ceiling or num_tokens < 1:
            return num_tokens
        return self.sizes[bisect.bisect_left(self.sizes, num_tokens)]

    def mode(self, seqs) -> str:
        """FULL, PIECEWISE or NONE for a batch of (query length, context length)."""
        t = sum(int(q) for q, _ in seqs)
        if t < 1 or t > self.ceiling:
            return NONE
        return FULL if all(int(q) == 1 for q, _ in seqs) else PIECEWISE

    def to_json(self) -> dict:
        return {"sizes": list(self.sizes)}

    @classmethod
    def from_json(cls, obj: dict) -> "GraphPolicy":
        return cls(tuple(int(s) for s in obj["sizes"]))
