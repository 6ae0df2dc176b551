"""`hybrid export-hf`: a training checkpoint -> a folder people can load.

    DIR/config.json, model.safetensors        the base in its own HuggingFace format (Llama, Mistral, Qwen2 or GPT-2
                                              names and config; tied or not as the base was): AutoModelForCausalLM
    DIR/memory.safetensors, memory_config.json   the memory's weights (our names) and settings
    DIR/tokenizer.json, tokenizer_config.json    the run's tokenizer (the base's + our special tokens)
    DIR/README.md                             what each file is and how to load it

The folder is written under a temp name beside DIR and renamed into place: nothing half-written is ever at DIR.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from hybrid.core.errors import HybridError, describe_os_error
from hybrid.core.io import atomic_path
from hybrid.data.tokenizer import EOS, SEP, SPECIAL_TOKENS, TOKENIZER_FILE, TextTokenizer
from hybrid.models.pretrained import MEMORY_CONFIG, MEMORY_WEIGHTS, save_hf
from hybrid.training import checkpoints as ckpt_io


def export_hf(checkpoint: str | Path, output: str | Path) -> dict[str, Any]:
    """Write `checkpoint` (a checkpoint folder, or a run folder -> its best) as a HuggingFace folder at `output`,
    which must not exist or be empty. Returns what was written."""
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise HybridError(f"{output}: exists and is not empty (export-hf writes a new folder)")
    path = ckpt_io.resolve_checkpoint(checkpoint)
    tokenizer = TextTokenizer.load(path)
    model = ckpt_io.load_model(path)
    with atomic_path(output) as tmp:  # a temp name beside `output`, renamed onto it at the end
        tmp.unlink()
        tmp.mkdir()
        try:
            names = save_hf(model, tmp, eos_token_id=tokenizer.eos_id)
            tokenizer.tokenizer.save(str(tmp / TOKENIZER_FILE))
            (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(), indent=2) + "\n")
            (tmp / "README.md").write_text(readme(model.config, path, MEMORY_WEIGHTS in names))
        except (OSError, RuntimeError, SafetensorError) as e:  # how torch and safetensors report a failed write
            shutil.rmtree(tmp, ignore_errors=True)
            why = describe_os_error(e) if isinstance(e, OSError) else str(e).splitlines()[0][:200]
            raise HybridError(f"{output}: could not write the export ({why}); nothing was left behind") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return {
        "checkpoint": str(path),
        "output": str(output),
        "files": sorted(p.name for p in output.iterdir()),
        "model_type": model.config.hf_model_type or model.config.family,
    }


def _tokenizer_config() -> dict[str, Any]:
    """Our special tokens, and the plain fast tokenizer class: tokenizer.json is used as it is (a model-specific
    class would add its own BOS/prefix rules that training never saw)."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "pad_token": EOS,
        "sep_token": SEP,
        "additional_special_tokens": list(SPECIAL_TOKENS),
    }


def readme(config, checkpoint: Path, has_memory: bool) -> str:
    kind = config.hf_model_type or config.family
    memory = (
        f"- `{MEMORY_WEIGHTS}`: the memory's weights under our parameter names (LM2 internal memory, "
        "LongMem retrieval gates); `transformers` ignores it.\n"
        if has_memory
        else "- (no memory weights: this model was trained with both memories off)\n"
    )
    return f"""# A hybrid model, exported

Exported by `hybrid export-hf` from `{checkpoint}`: a {kind} base trained with LM2 internal memory and LongMem
external memory (Hybrid LLM Trainer).

## Files

- `config.json`, `model.safetensors`: the base in its own HuggingFace format ({kind}, float32), loadable without
  this project. The memory is not in it: this is the model with its memory switched off.
{memory}- `{MEMORY_CONFIG}`: the memory settings it was trained with (slots, retrieval layers, segment length, …).
- `tokenizer.json`, `tokenizer_config.json`: the tokenizer used in training (the base's, plus the special tokens
  {", ".join(f"`{t}`" for t in SPECIAL_TOKENS)}). Training examples are `input {SEP} output {EOS}`: prompt with
  the input followed by `{SEP}`.

## Loading

The base alone, with `transformers`:

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("DIR")
tokenizer = AutoTokenizer.from_pretrained("DIR")
```

Base and memory, with Hybrid LLM Trainer (`pip install -e .` of the project):

```python
from hybrid.models import from_pretrained
model = from_pretrained("DIR")                       # memory settings from {MEMORY_CONFIG}
model = from_pretrained("DIR", retrieval_k=8)        # or override some
```

or train on from it: `hybrid train model.pretrained=DIR …` (the `model` section's memory settings then apply; they
must match the shapes in `{MEMORY_WEIGHTS}`, or switch a memory off).

`transformers` attends over the whole input; this model reads inputs in segments of {config.segment_length} tokens
(attention and positions restart in every segment, memory carries the rest). With the memory gates closed the two
give the same logits on inputs of up to one segment.
"""
