"""The 0.2 hook rename (``ln_final.hook_normalized`` -> ``ln_final.hook_out``, merged ``hook_embed`` ->
``hook_inputs_embeds``): removed names say where their value went, and artefacts written before the rename are
read through the documented alias (prototypes) or refused with a message naming the file, the old and new
names and the fix (activation stores, MoRAS setup folders, run identities). A current artefact's
``ln_final.hook_normalized`` (the TransformerLens value) is never read as the old one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from moras_interp.activations.manifest import manifest_checksum
from moras_interp.activations.store import ActivationStore, dataset_fingerprint
from moras_interp.identity import IdentityMismatchError, RunIdentity, check_or_write
from moras_interp.models.hooks import RENAMED, expand_names
from moras_interp.moras.prototype import FORMAT, UnsafePrototype
from moras_interp.moras.setup_files import check_provenance
from moras_interp.moras.states import FINAL
from moras_interp.moras.steering import steering_targets

OLD_FINAL, OLD_EMBED = "ln_final.hook_normalized", "hook_embed"


def test_the_rename_table() -> None:
    assert FINAL == "ln_final.hook_out"
    assert RENAMED == {OLD_FINAL: "ln_final.hook_out", OLD_EMBED: "hook_inputs_embeds"}


def test_a_removed_name_says_where_its_value_went() -> None:
    available = ["hook_embed", "hook_inputs_embeds", "blocks.0.hook_resid_post", "ln_final.hook_out", "hook_logits"]
    with pytest.raises(KeyError, match=r"'ln_final\.hook_normalized' was renamed in 0\.2.*'ln_final\.hook_out'"):
        expand_names([OLD_FINAL], available)
    # a name that exists is resolved as it is (after the per-head merge, ln_final.hook_normalized exists too,
    # with its TransformerLens meaning, and is then not redirected)
    assert expand_names([OLD_FINAL], [*available, OLD_FINAL]) == [OLD_FINAL]


# ----------------------------------------------------------------------------------------- prototypes
def _old_prototype_file(path: Path, tensors: dict[str, torch.Tensor], hooks: list[str]) -> Path:
    """A prototype file as 0.1 wrote it: tensors under the old names, no ``format`` metadata."""
    meta = {"prompts": json.dumps(["p1", "p2"]), "greedy_tokens": json.dumps(["a", "b"]),
            "provenance": json.dumps({"n_tokens": 3, "hooks": hooks, "system": ""})}
    save_file(tensors, str(path), metadata=meta)
    return path


def test_a_prototype_written_before_the_rename_is_read_through_the_alias(tmp_path: Path) -> None:
    final, embed = torch.randn(3, 8), torch.randn(3, 8)
    path = _old_prototype_file(tmp_path / "old.safetensors", {OLD_FINAL: final, OLD_EMBED: embed},
                               [OLD_FINAL, OLD_EMBED])
    proto = UnsafePrototype.load(path)
    assert set(proto.states) == {"ln_final.hook_out", "hook_inputs_embeds"}
    assert torch.equal(proto.final, final) and torch.equal(proto.states["hook_inputs_embeds"], embed)
    assert proto.provenance["hooks"] == ["ln_final.hook_out", "hook_inputs_embeds"]
    assert proto.provenance["renamed_hooks"] == {OLD_FINAL: "ln_final.hook_out", OLD_EMBED: "hook_inputs_embeds"}
    assert proto.prompts == ["p1", "p2"]
    # MoRAS steers the same value at the same place: the target at ln_final.hook_out is the old file's tensor
    assert torch.equal(steering_targets(proto.states)["ln_final.hook_out"], final)
    # saved again it is a current file, read back unchanged
    again = UnsafePrototype.load(proto.save(tmp_path / "new.safetensors"))
    assert set(again.states) == set(proto.states) and torch.equal(again.final, final)


def test_an_old_prototype_with_both_names_is_refused(tmp_path: Path) -> None:
    path = _old_prototype_file(tmp_path / "both.safetensors",
                               {OLD_FINAL: torch.ones(3, 4), "ln_final.hook_out": torch.zeros(3, 4)}, [OLD_FINAL])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*before the 0\.2 hook rename.*ln_final\.hook_out"):
        UnsafePrototype.load(path)


def test_a_current_prototype_keeps_the_transformerlens_meaning(tmp_path: Path) -> None:
    weighted, tl = torch.randn(3, 8), torch.randn(3, 8)
    path = UnsafePrototype({FINAL: weighted, OLD_FINAL: tl}, ["p"], ["a"], {"hooks": [FINAL, OLD_FINAL]}).save(
        tmp_path / "p.safetensors")
    proto = UnsafePrototype.load(path)
    assert torch.equal(proto.final, weighted) and torch.equal(proto.states[OLD_FINAL], tl)  # not aliased
    assert "renamed_hooks" not in proto.provenance
    # a current file holding only the TransformerLens value is not a MoRAS prototype: refused, not misread
    only_tl = UnsafePrototype({OLD_FINAL: tl}).save(tmp_path / "tl.safetensors")
    with pytest.raises(ValueError, match=r"holds no 'ln_final\.hook_out' tensor.*TransformerLens value"):
        UnsafePrototype.load(only_tl)


def test_a_prototype_of_an_unknown_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.safetensors"
    save_file({FINAL: torch.ones(3, 4)}, str(path), metadata={"format": "moras_interp.unsafe_prototype/9"})
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*unsafe_prototype/9.*{re.escape(FORMAT)}"):
        UnsafePrototype.load(path)


# ----------------------------------------------------------------------------------------- activation stores
def _store(root: Path, hooks: list[str], edits: list[dict] | None = None) -> ActivationStore:
    m = {"model_id": "m", "hooks": hooks, "positions": "last", "dataset_fingerprint": dataset_fingerprint(["x"]),
         "dtype": "float32", "shard_size": 4, "n_examples": 4, "identity": {"edits": edits or []}}
    store = ActivationStore(root, m)
    store.write_shard(0, {h: torch.full((4, 5), float(j)) for j, h in enumerate(hooks)})
    return store


def _as_format(root: Path, fmt: str, rename: dict[str, str] | None = None) -> None:
    """Rewrite the manifest as another version would have written it (valid checksum)."""
    path = root / "manifest.json"
    m = json.loads(path.read_text())
    m.pop("checksum")
    text = json.dumps(m | {"format": fmt})
    for new, old in (rename or {}).items():
        text = text.replace(json.dumps(new), json.dumps(old))
    m = json.loads(text)
    path.write_text(json.dumps(m | {"checksum": manifest_checksum(m)}))


def test_an_old_store_naming_a_renamed_hook_is_refused(tmp_path: Path) -> None:
    _store(tmp_path, ["ln_final.hook_out"])
    _as_format(tmp_path, "moras_interp.activation_store/1", {"ln_final.hook_out": OLD_FINAL})
    msg = (rf"{re.escape(str(tmp_path / 'manifest.json'))} was written before the 0\.2 hook rename.*"
           r"'ln_final\.hook_normalized' -> 'ln_final\.hook_out'.*Collect again into a new folder")
    with pytest.raises(ValueError, match=msg):
        ActivationStore.open(tmp_path)
    with pytest.raises(ValueError, match=msg):  # resuming it under the new meaning is refused too
        _store(tmp_path, [OLD_FINAL])


def test_an_old_store_edited_at_a_renamed_hook_is_refused(tmp_path: Path) -> None:
    _store(tmp_path, ["blocks.0.hook_resid_post"], edits=[{"hook": "hook_embed", "fn": "f"}])
    _as_format(tmp_path, "moras_interp.activation_store/1")
    with pytest.raises(ValueError, match=r"names \['hook_embed'\].*'hook_embed' -> 'hook_inputs_embeds'"):
        ActivationStore.open(tmp_path)


def test_an_old_store_of_unrenamed_hooks_is_still_read(tmp_path: Path) -> None:
    _store(tmp_path, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"])
    _as_format(tmp_path, "moras_interp.activation_store/1")
    store = ActivationStore.open(tmp_path)
    assert torch.equal(store.load("blocks.1.hook_resid_post"), torch.ones(4, 5))


def test_a_current_store_keeps_its_names(tmp_path: Path) -> None:
    _store(tmp_path, [OLD_FINAL, "ln_final.hook_out"])  # /2: ln_final.hook_normalized is the TL value
    store = ActivationStore.open(tmp_path)
    assert store.hooks == [OLD_FINAL, "ln_final.hook_out"]
    assert torch.equal(store.load(OLD_FINAL), torch.zeros(4, 5)) and torch.equal(store.load(FINAL), torch.ones(4, 5))
    _as_format(tmp_path, "moras_interp.activation_store/7")
    with pytest.raises(ValueError, match=r"activation_store/7.*Upgrade moras_interp"):
        ActivationStore.open(tmp_path)


# ----------------------------------------------------------------------------------------- MoRAS folders, identities
def test_a_moras_setup_folder_from_before_the_rename_is_refused(tmp_path: Path) -> None:
    prov = {"model": "m", "prototype_hooks": [FINAL], "n_tokens": 3}
    (tmp_path / "setup_provenance.json").write_text(json.dumps(prov | {"prototype_hooks": [OLD_FINAL]}))
    with pytest.raises(IdentityMismatchError, match=r"before the 0\.2 hook rename.*'ln_final\.hook_out'.*--overwrite"):
        check_provenance(tmp_path, prov)
    # a current folder whose prototype also has the TransformerLens ln_final.hook_normalized is reused
    cur = prov | {"prototype_hooks": [FINAL, OLD_FINAL]}
    (tmp_path / "setup_provenance.json").write_text(json.dumps(cur))
    check_provenance(tmp_path, cur)


def test_a_run_identity_diff_over_a_renamed_hook_explains_the_rename(tmp_path: Path) -> None:
    def ident(hook: str) -> RunIdentity:
        return RunIdentity("evaluation", methods={"moras": {"config": {"steer_hooks": [hook]}}})

    assert check_or_write(tmp_path, ident(OLD_FINAL)) == "new"
    with pytest.raises(IdentityMismatchError, match=r"steer_hooks(.|\n)*'ln_final\.hook_normalized' was renamed in "
                                                    r"0\.2(.|\n)*--overwrite"):
        check_or_write(tmp_path, ident(FINAL))


def test_every_documented_name_has_its_transformerlens_and_nnterp_equivalents() -> None:
    from moras_interp.models.hooks import HOOK_DOC
    from moras_interp.models.tl_names import EQUIVALENTS

    missing = sorted(set(HOOK_DOC) - set(EQUIVALENTS))
    assert not missing, f"add rows to moras_interp/models/tl_names.EQUIVALENTS for {missing}"
    assert EQUIVALENTS["ln_final.hook_out"][0] == "`ln_final.hook_out`"  # the bridge name we follow
    assert EQUIVALENTS["hook_embed"][0].startswith("`embed.hook_out`")


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl"])
def test_hook_embed_in_a_trace_and_as_an_edit(models, arch: str) -> None:
    """nnsight reads / writes both embedding names in execution order (embed_tokens runs before the vision
    tower); an edit of hook_embed at text positions reaches layer 0, at image positions it is overwritten by the
    merged image features (as HF's masked_scatter does)."""
    from moras_interp.models.validate import probe_image

    model = models(arch)
    batch = model.prepare([probe_image()], ["what is in the image ?"])
    _, cache = model.run_with_cache(batch, ["hook_embed", "hook_inputs_embeds"])
    with torch.no_grad(), model.trace(batch):
        emb = model.read("hook_embed").save()
        merged = model.read("hook_inputs_embeds").save()
    torch.testing.assert_close(emb, cache["hook_embed"], atol=0, rtol=0)
    torch.testing.assert_close(merged, cache["hook_inputs_embeds"], atol=0, rtol=0)
    img = batch.layouts[0].image_positions
    delta = torch.zeros_like(cache["hook_embed"])
    delta[0, -1] = 1.0           # the last position: a text token
    delta[0, img] = 5.0           # image positions: replaced by the image features afterwards
    with model.hooks([("hook_embed", lambda x, ctx: x + delta)]):
        _, edited = model.run_with_cache(batch, ["hook_inputs_embeds"])
    diff = edited["hook_inputs_embeds"] - cache["hook_inputs_embeds"]
    torch.testing.assert_close(diff, delta * (delta == 1.0), atol=1e-6, rtol=0)
