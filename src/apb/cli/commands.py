"""The subcommands of ``apb`` that train, compress, pack and measure models; each is a
:class:`~apb.cli.command.Command` whose flags come from the job it runs."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import typing

from ..compare import CompareConfig, run_compare
from ..jobs.common import check_output_dir, check_outputs, write_json
from ..jobs.demo import DemoConfig, run_demo
from ..jobs.evaluate import evaluate_file, is_packed_file
from ..jobs.plot_weights import plot_weights
from ..jobs.prune_quantized import QuantizedPruningJob, run_quantized_pruning_job
from ..jobs.ptq import METHODS as PTQ_METHODS
from ..jobs.ptq import PTQJob, run_ptq_job
from ..jobs.repack import repack_file
from ..jobs.transformer import evaluate_transformer, load_packed_transformer, run_transformer_ptq
from ..methods import available, config_class, create
from ..pack import load_packed, pack_, save_packed
from ..pack.xor import decode_file, encode_file, is_xor_file
from ..summary import summary
from ..train import TrainConfig, build_model_from_checkpoint, train
from .command import CLIError, Command
from .flags import add_dataclass_flags, add_field_flag, class_docs, field_help, from_args


# -- train -------------------------------------------------------------------------------------
def _method_option_owners() -> dict[str, type]:
    """Each distinct method option, with the first method config that declares it."""
    owners: dict[str, type] = {}
    for name in available():
        for f in dataclasses.fields(config_class(name)):
            owners.setdefault(f.name, config_class(name))
    return owners


def _train_arguments(parser) -> None:
    add_dataclass_flags(parser, TrainConfig)
    group = parser.add_argument_group(
        "method options", "fields of the method's config (apb.methods.config_class(METHOD)); "
        "methods: " + ", ".join(available()))
    for name, owner in _method_option_owners().items():
        add_field_flag(group, name, typing.get_type_hints(owner)[name], dest="method__" + name,
                       default=None, help=field_help(class_docs(owner), name))


def _train(args) -> int:
    method_options = dict(args.method_options or {})
    method_options.update({k.removeprefix("method__"): v for k, v in vars(args).items()
                           if k.startswith("method__") and v is not None})
    config = from_args(TrainConfig, args, method_options=method_options)
    create(config.method, **method_options)  # validate before any file is touched
    check_output_dir(config.out_dir)
    result = train(config)
    print(f"best test acc {result.best_test_acc:.4f}, final {result.final_test_acc:.4f}; "
          f"bits/weight {result.stats['bits_per_weight']:.3f}; checkpoints in {result.out_dir}")
    return 0


# -- post-training compression and pruning ----------------------------------------------------
def _ptq_arguments(parser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", nargs="?", default="",
                        help="a full-precision checkpoint (or --hf DIR instead)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="the compressed checkpoint to write")
    add_dataclass_flags(parser, PTQJob, skip=("checkpoint", "output", "method", "target"))
    parser.add_argument("--method", required=True, choices=PTQ_METHODS, help="what to do")
    parser.add_argument("--target", required=True,
                        help="e.g. 0.5 (obc-prune), 2:4, 4 (obc-quant), sparsity=0.5,bits=4, "
                             "1.6 (apb-ptq: bits per weight), model_bytes=20000")


def _ptq(args) -> int:
    job = from_args(PTQJob, args)
    if bool(job.checkpoint) == bool(job.hf):
        raise CLIError("give either a checkpoint (CKPT) or a Hugging Face model directory "
                       "(--hf DIR), not both and not neither")
    (run_transformer_ptq if job.hf else run_ptq_job)(job)
    return 0


def _prune_quantized_arguments(parser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="a bnn or dorefa checkpoint")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="the pruned checkpoint to write")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-bytes", dest="pruning__budget_bytes", type=int, default=None,
                        metavar="B", help="size budget in model bytes (apb summary's accounting)")
    budget.add_argument("--budget-ratio", dest="pruning__budget_ratio", type=float,
                        default=None, metavar="R",
                        help="size reduction: at most (1 - R) times the unpruned model bytes")
    add_dataclass_flags(parser, QuantizedPruningJob, skip=(
        "checkpoint", "output", "pruning.budget_bytes", "pruning.budget_ratio", "pruning.seed"))


def _prune_quantized(args) -> int:
    run_quantized_pruning_job(from_args(QuantizedPruningJob, args))
    return 0


# -- inspect, pack, encrypt, evaluate ---------------------------------------------------------
def _load_any(path: str, hf: str | None = None):
    if hf:
        return load_packed_transformer(hf, path)
    if is_packed_file(path):
        return load_packed(path)
    model, _ = build_model_from_checkpoint(path)
    return model


def _summary_arguments(parser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT_OR_FILE",
                        help="a checkpoint written by apb train (last.pt/best.pt) or a packed "
                             "model file")
    parser.add_argument("--hf", default=None, metavar="DIR",
                        help="the packed file is of the Hugging Face model in DIR")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write it as JSON")


def _summary(args) -> int:
    check_outputs(args.json)
    s = summary(_load_any(args.checkpoint, args.hf))
    print(s.table())
    if args.json:
        write_json(args.json, s.to_dict())
    return 0


def _pack_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint written by apb train (last.pt/best.pt)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="the packed model file to write (.safetensors)")


def _pack(args) -> int:
    check_outputs(args.output)
    if is_packed_file(args.checkpoint):
        raise CLIError(f"{args.checkpoint} is already a packed model; apb pack takes a "
                       "training checkpoint (last.pt / best.pt)")
    model, ckpt = build_model_from_checkpoint(args.checkpoint)
    predicted = summary(model).model_bytes
    pack_(model)
    info = save_packed(model, args.output, architecture=ckpt["model"])
    if info.model_bytes != predicted:  # the format and the accounting must agree
        raise CLIError(f"wrote {info.model_bytes} model bytes but the summary predicts "
                       f"{predicted}: please report this bug")
    print(f"packed {args.checkpoint} -> {args.output}: {info.file_bytes:,} bytes "
          f"({info.model_bytes:,} model bytes, as summary predicts, + {info.header_bytes:,} "
          "header)")
    return 0


def _xor_encode_arguments(parser) -> None:
    parser.add_argument("packed", metavar="FILE", help="a packed model file (from apb pack)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="the XOR-encoded file to write (.safetensors)")
    parser.add_argument("--seed", type=int, default=0, help="the XOR network's seed")
    parser.add_argument("--scheme", default="auto", choices=["auto", "xor", "plain"],
                        help="auto: XOR where it beats the dense planes, the care bits as they "
                             "are elsewhere; xor / plain: always that")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the report")


def _xor_encode(args) -> int:
    check_outputs(args.output, args.json)
    if is_xor_file(args.packed):
        raise CLIError(f"{args.packed} is already XOR-encoded; apb xor-encode takes a packed "
                       "model (from apb pack)")
    report = encode_file(args.packed, args.output, seed=args.seed, scheme=args.scheme,
                         progress=sys.stderr.isatty())
    print(report.table(), end="")
    print(f"wrote {args.output}")
    if args.json:
        write_json(args.json, report.to_dict())
    return 0


def _xor_decode_arguments(parser) -> None:
    parser.add_argument("encoded", metavar="FILE", help="a file written by apb xor-encode")
    parser.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="the packed model file to write (.safetensors)")


def _xor_decode(args) -> int:
    check_outputs(args.output)
    info = decode_file(args.encoded, args.output)
    print(f"decoded {args.encoded} -> {args.output}: {info.file_bytes:,} bytes "
          f"({info.model_bytes:,} model bytes + {info.header_bytes:,} header), every layer "
          "checked against its checksum")
    return 0


def _repack_arguments(parser) -> None:
    parser.add_argument("input", metavar="IN",
                        help="a packed or XOR-encoded model file you trust, typically of "
                             "format version 1 (written without a checksum)")
    parser.add_argument("output", metavar="OUT",
                        help="the file to write in the current format version (packed stays "
                             "packed, XOR-encoded stays XOR-encoded); may be IN itself")


def _repack(args) -> int:
    done = repack_file(args.input, args.output)
    print(f"repacked {args.input} -> {args.output}: {done.kind} format version "
          f"{done.format_version} with its sha256, {done.info.file_bytes:,} bytes")
    return 0


def _eval_arguments(parser) -> None:
    parser.add_argument("model", metavar="CKPT_OR_FILE",
                        help="a checkpoint (.pt) or a packed model (.safetensors)")
    parser.add_argument("--dataset", default=None,
                        help="dataset name, apb.data.available() (not with --hf)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="where the dataset's files are (not needed for mnist5k, digits)")
    parser.add_argument("--batch-size", type=int, default=256, metavar="N",
                        help="samples per forward")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write it as JSON")
    hf = parser.add_argument_group(
        "Hugging Face models", "a packed file of a local Hugging Face encoder, measured by the "
        "fidelity of its sentence embeddings to the original model's")
    hf.add_argument("--hf", default=None, metavar="DIR",
                    help="the original model's directory (config.json + model.safetensors)")
    hf.add_argument("--texts", default="python-docs", metavar="FILE",
                    help="one text per line, or python-docs (Python's reference documentation)")
    hf.add_argument("--skip", type=int, default=512, metavar="N",
                    help="skip the first N texts (the calibration texts of apb ptq --hf)")
    hf.add_argument("--limit", type=int, default=512, metavar="M", help="measure on M texts")


def _eval(args) -> int:
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    check_outputs(args.json)
    if args.hf:
        result = evaluate_transformer(args.hf, args.model, args.texts, skip=args.skip,
                                      limit=args.limit, batch_size=min(args.batch_size, 64))
        f = result["fidelity"]
        print(f"{args.model} ({args.hf}): embedding cosine {f['cosine']:.4f}, spearman "
              f"{f['spearman']:.4f} on {f['n_texts']} texts, {result['model_bytes']:,} model "
              f"bytes, {result['bits_per_weight']:.3f} bits/weight")
        if args.json:
            write_json(args.json, result)
        return 0
    if not args.dataset:
        raise CLIError("give the dataset with --dataset (or --hf DIR for a Hugging Face model)")
    result = evaluate_file(args.model, args.dataset, data_dir=args.data_dir,
                           batch_size=args.batch_size)
    print(f"{args.model} on {args.dataset}: test acc {result['test_acc']:.4f}, "
          f"{result['model_bytes']:,} model bytes, {result['bits_per_weight']:.3f} bits/weight, "
          f"predictions sha256 {result['predictions_sha256']}")
    if args.json:
        write_json(args.json, result)
    return 0


# -- demo, comparison, pictures ----------------------------------------------------------------
def _demo(args) -> int:
    run_demo(from_args(DemoConfig, args))
    return 0


def _compare(args) -> int:
    run_compare(from_args(CompareConfig, args), command=shlex.join(["apb", *sys.argv[1:]]))
    return 0


def _plot_weights_arguments(parser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="a checkpoint of an APB model")
    parser.add_argument("--layer", default=None, metavar="NAME",
                        help="the layer (default: every APB layer, one panel each)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.png",
                        help="the picture to write")


def _plot_weights(args) -> int:
    check_outputs(args.output)
    layers = plot_weights(args.checkpoint, args.output, layer=args.layer)
    print(f"wrote {args.output}: {', '.join(layers)}")
    return 0


def _flags_of(cls, **kwargs):
    def arguments(parser: argparse.ArgumentParser) -> None:
        add_dataclass_flags(parser, cls, **kwargs)
    return arguments


COMMANDS = (
    Command("train", "train a model with a compression method",
            "Train a model; flags are the fields of apb.train.TrainConfig, and the method flags "
            "are the fields of the chosen method's config.", _train_arguments, _train),
    Command("ptq", "compress a trained fp checkpoint after training (OBC, post-training APB)",
            "Post-training compression from a calibration set, no retraining: OBC pruning / "
            "quantization and post-training APB. Writes a checkpoint that apb summary reads, or, "
            "for a local Hugging Face model (--hf DIR, calibrated on texts), a packed model "
            "file; flags are the fields of apb.jobs.ptq.PTQJob.", _ptq_arguments, _ptq),
    Command("prune-quantized",
            "remove filters of a binary/DoReFa checkpoint to a size budget (BO ratios)",
            "Filter pruning of a trained binary (bnn) or DoReFa network: per-layer ratios by "
            "Bayesian optimisation (optuna) under a budget in model bytes, compared with "
            "uniform ratios at the same budget and fine-tuning. Writes the pruned checkpoint "
            "(apb summary / eval / pack read it); flags are the fields of "
            "apb.jobs.prune_quantized.QuantizedPruningJob and of its "
            "apb.prune.QuantizedPruningConfig.", _prune_quantized_arguments, _prune_quantized),
    Command("compare", "every method on one harness: accuracy, memory, latency, Pareto plot",
            "Train and compress one model with every listed method and several seeds (same "
            "training budget), then report test accuracy (mean ± std), bits per weight, model "
            "bytes and CPU latency at batch 1 and 64; JSON, a markdown table and a Pareto plot. "
            "Flags are the fields of apb.compare.CompareConfig; method names are described in "
            "apb.compare.spec (e.g. fp, bnn, dorefa2, magnitude@0.9, magnitude@0.9+bnn, "
            "quantized-pruning@0.25, obc-compound@0.5/2, apb-ptq@1.6, apb@0.02).",
            _flags_of(CompareConfig), _compare),
    Command("plot-weights", "histogram of an APB layer's latent weights with its band",
            "Draw the latent-weight histogram of one APB layer of a checkpoint: the binarized "
            "band |w| <= alpha + delta... and the full-precision tails outside it, marked at "
            "alpha and alpha ± delta.", _plot_weights_arguments, _plot_weights),
    Command("summary", "per-layer memory table of a checkpoint", "",
            _summary_arguments, _summary),
    Command("pack", "pack a trained checkpoint into a safetensors inference file",
            "Turn every compressed layer of a checkpoint into its packed form (sign bits, "
            "alpha, sparse full-precision corrections) and write it as safetensors with JSON "
            "metadata; the file's size minus its header is the model_bytes apb summary "
            "predicts.", _pack_arguments, _pack),
    Command("xor-encode", "XOR-gate encrypt a packed model's sparse bit-planes",
            "Encrypt every packed layer's bit-planes with a seeded random XOR-gate network "
            "(pruned weights and APB signs implied by the CSR part are don't-care bits), store "
            "the pruning mask beside them, and write the result as safetensors with JSON "
            "metadata; print bits per weight per layer (encrypted, patches, mask, total) "
            "against CSR and bitmap. apb xor-decode gives the packed model back.",
            _xor_encode_arguments, _xor_encode),
    Command("xor-decode", "decode an XOR-encoded file back into its packed model file",
            "Decode every layer (checked against its recorded sha256) and write the packed "
            "model the file was encoded from.", _xor_decode_arguments, _xor_decode),
    Command("repack", "rewrite a trusted packed / XOR file of an older format version (no "
            "checksum) in the current one",
            "Files of format version 1 (written by an apb from before files carried a "
            "sha256) are refused by every other command: nothing tells them from a checked "
            "file whose checksum was stripped and whose contents were edited. If you trust "
            "IN, this loads it anyway (saying so in a one-line warning), with every other "
            "check of loading, and writes it to OUT atomically as a checked file of the "
            "current format version; a packed file stays packed, an XOR-encoded one is "
            "encoded again with its recorded seed and scheme. From Python: "
            "apb.jobs.repack.repack_file, or load_packed / load_xor with "
            "allow_unverified=True.", _repack_arguments, _repack),
    Command("eval", "test accuracy and size of a checkpoint or a packed model file",
            "Evaluate a checkpoint (fake-quantized training model) or a packed model file on a "
            "dataset's test split; prints and optionally writes test_acc, model_bytes, "
            "bits_per_weight and predictions_sha256 (sha256 of the int64 argmax predictions in "
            "test-set order).", _eval_arguments, _eval),
    Command("demo", "the main job: fp, BNN and APB LeNet-5 on the real MNIST-5k digits",
            "Train fp, bnn and apb LeNet-5 models on mnist5k with several seeds, print mean ± "
            "std test accuracy and memory, save checkpoints and JSON.",
            _flags_of(DemoConfig, skip=("methods",)), _demo),
)
