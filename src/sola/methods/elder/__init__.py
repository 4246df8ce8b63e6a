"""ELDER (Li et al., 2025): a mixture of shared LoRAs on L layers, a router per layer, a guided loss and a
Hamming-distance deferral. See ../docs/methods.md for how this implementation reads the paper.

- Query: one vector per input, read once before the first mixture layer (the paper's last-token hidden state, or any
  SoLA key strategy computed outside the model, e.g. key="encoder"), so both methods can route on the same vector.
- Mixture: at layer l, scores s_l = softmax(W_l q) over N LoRAs; the top-k are kept, and the layer outputs
  base(x) + sum over the top-k of s_lj * B_j A_j x, on every token of the input. The allocation is decided once from
  the prompt and held for every generated token.
- Guided loss: each edit gets a preset random allocation (k of N LoRAs per layer), the same for identical edits
  (same prompt and target) and different from every other live edit's; training minimises the target's
  cross-entropy + lambda * sum over the allocation of -log s_lj.
- Deferral: the allocation code (L x N bits, L x k set) of every training row of an edit is stored at its last
  training iteration; an input uses the mixture only if its nearest stored code is at Hamming distance < `epsilon`
  (Algorithm 1: at exactly epsilon it defers), else it runs the base model, bit for bit. Codes are packed into bytes
  and compared with XOR and a popcount table. `calibrate_threshold` makes epsilon follow held-out unrelated
  questions instead (re-chosen after every training, as the codes move).
  This rule and ours (a query radius, SoLA's subject gate) are `sola.methods.elder.deferral`.
- Lifelong: the LoRAs and routers are shared and keep training as edits arrive: one edit at a time (a fresh Adam per
  edit, until it converges), or a batch at a time (`edit_many`: the authors' runner, MELO's: a fresh Adam at lr
  1e-2, `fixed_steps` = 50 iterations, the lr halved every 20, on the whole batch).
- Rollback is NOT exact: it removes the edit's code from the deferral table, so inputs that only matched it fall back
  to the base model; what its training changed in the shared LoRAs and routers stays. `Edit.note` says so.

The package, one concept per module: config.py (`ElderConfig`, `ElderOnlineConfig`), mixture.py (the mixture layer
and the routing state its layers share), editor.py (`ElderEditor`), online.py (`ElderOnlineEditor`) and deferral.py
(the three deferral rules).
"""

from .config import ElderConfig, ElderOnlineConfig
from .editor import ElderEditor
from .online import ElderOnlineEditor

__all__ = ["ElderConfig", "ElderEditor", "ElderOnlineConfig", "ElderOnlineEditor"]
