"""Channel groups: which channels of a traced network must keep one width.

The network is captured with ``torch.export(..., strict=False)`` (it captures every timm and
torchvision CNN we tried, with exact shapes on every node) and each tensor's channel dimension is
followed through the ATen graph. Every conv/linear output starts a *channel space*; spaces are
merged (union-find) where an operation forces equal widths: residual adds and other element-wise
ops, depthwise and grouped convolutions, BatchNorm/LayerNorm, squeeze-excite multiplies, layer
scales. Concatenations are kept as ordered lists of spaces, so DenseNet/Inception concats work.

Channels split into fixed pieces (``split``/``chunk``, mixed-kernel convs, Res2Net scales, CSP
halves, radix/shuffle reshapes to ``(k, C/k)``) make each piece a space of its own; pieces that
must stay equal (``chunk``, an ``int`` split size, a reshape to ``k`` rows) are merged. Where the
sizes are stored on the calling module (found from the traced source line, e.g.
``torch.split(x, self.splits, 1)``), the graph records a :class:`StoredSize` so G rewrites them.

Anything the analysis cannot prove width-agnostic (splits whose sizes it cannot find, reshapes to
stored widths, matmuls) *freezes* the spaces involved: they keep their full width.
That is the safe answer Torch-Pruning lacks: a frozen group costs some pruning freedom, never a
broken network. The network input and the logits are frozen by definition.

The result, :class:`ChannelGraph`, knows for every parameter which dimensions follow which group,
so it can give new parameter shapes, parameter counts and multiply-accumulates for any choice of
widths without building the model (that is what makes threshold searches fast); the generator
then applies those shapes to real modules.

Layout (each module imports only the ones above it):

* :mod:`~slimkit.graph.unionfind`, :mod:`~slimkit.graph.channels`, :mod:`~slimkit.graph.tracing`:
  union-find over channel spaces; the result types; ``torch.export`` capture, node metadata and
  stored-size discovery.
* :mod:`~slimkit.graph.walk`: the walk over the traced graph, its helpers, and the op-rule registry
  (:data:`~slimkit.graph.walk.RULES`, filled by :func:`~slimkit.graph.walk.rule`).
* :mod:`slimkit.graph.ops`: one module per family of op rules (convs, norms, element-wise,
  cat/stack, split/chunk, reshape/flatten, permute, reductions, slices, attention, ...).
* :mod:`~slimkit.graph.analysis`: :func:`analyze`, which runs them all and names the groups.
"""

from slimkit.graph.analysis import analyze
from slimkit.graph.channels import ChannelGraph, ChannelGroup, Segment, StoredSize
from slimkit.graph.tracing import (GraphError, failing_module, input_size_problem, model_error, quiet_torch_logs,
                                   trace_fingerprint)

__all__ = ["ChannelGroup", "ChannelGraph", "GraphError", "StoredSize", "analyze", "failing_module", "model_error",
           "Segment", "input_size_problem", "quiet_torch_logs", "trace_fingerprint"]
