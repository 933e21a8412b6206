"""The ``apb`` command: ``apb train | ptq | prune-quantized | summary | pack | xor-encode |
xor-decode | eval | demo | compare | plot-weights | bench gemm|model|xor``.

``apb train`` flags map one-to-one onto :class:`apb.train.TrainConfig` fields, and the
method flags (``--fp-fraction``, ``--act-bits``, ...) onto the chosen method's config
dataclass. Errors a user can fix print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Sequence

EXIT_USAGE = 2


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (``apb train: error: ...``), exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _parse_bool_or_path(text: str):
    lowered = text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    return text


def _arg_type(annotation):
    """The argparse ``type`` for a dataclass field annotation (None for booleans)."""
    hints = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or (
        typing.get_origin(annotation) is typing.Union
    ) else (annotation,)
    hints = tuple(h for h in hints if h is not type(None))
    if bool in hints and str in hints:
        return _parse_bool_or_path
    if hints == (bool,):
        return None
    for kind in (int, float, str):
        if kind in hints:
            return kind
    if any(typing.get_origin(h) is dict or h is dict for h in hints):
        return _parse_json_dict
    if any(typing.get_origin(h) is tuple for h in hints):
        return lambda s: tuple(x.strip() for x in s.split(",") if x.strip())
    return str


def _add_dataclass_flags(parser, cls, *, dest_prefix: str = "", defaults_to_none=False,
                         skip=()):
    hints = typing.get_type_hints(cls)
    doc = cls.__doc__ or ""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = _arg_type(hints[f.name])
        dest = dest_prefix + f.name
        default = None if defaults_to_none else (
            f.default if f.default is not dataclasses.MISSING else f.default_factory()
        )
        help_text = _field_help(doc, f.name)
        if kind is None:
            parser.add_argument(_flag(f.name), dest=dest, default=default,
                                action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(_flag(f.name), dest=dest, default=default, type=kind,
                                metavar=f.name.upper(), help=help_text)


def _field_help(doc: str, name: str) -> str | None:
    """The text documenting ``name`` in a dataclass docstring: a ``name: text`` or
    ``name, other: text`` line and its more-indented continuation lines."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        head, sep, text = line.strip().partition(":")
        if not sep or name not in [h.strip() for h in head.split(",")]:
            continue
        indent = len(line) - len(line.lstrip())
        parts = [text.strip()]
        for nxt in lines[i + 1:]:
            if not nxt.strip() or len(nxt) - len(nxt.lstrip()) <= indent:
                break
            parts.append(nxt.strip())
        return " ".join(parts).replace("``", "").replace("%", "%%")
    return None


def _method_option_owners() -> dict[str, type]:
    """Each distinct method option, with the first method config that declares it."""
    from .methods import available, config_class

    owners: dict[str, type] = {}
    for name in available():
        cls = config_class(name)
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, cls)
    return owners


def build_parser() -> argparse.ArgumentParser:
    from .demo import DemoConfig
    from .methods import available
    from .train import TrainConfig

    parser = _Parser(
        prog="apb",
        description="Automatic Prune Binarization: train, inspect, pack, evaluate and demo "
                    "compressed models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)

    p_train = sub.add_parser(
        "train", help="train a model with a compression method",
        description="Train a model; flags are the fields of apb.train.TrainConfig, and the "
                    "method flags are the fields of the chosen method's config.",
    )
    _add_dataclass_flags(p_train, TrainConfig)
    group = p_train.add_argument_group(
        "method options", "fields of the method's config (apb.methods.config_class(METHOD)); "
        "methods: " + ", ".join(available()))
    for fname, owner in _method_option_owners().items():
        kind = _arg_type(typing.get_type_hints(owner)[fname])
        help_text = _field_help(_all_docs(owner), fname)
        if kind is None:
            group.add_argument(_flag(fname), dest="method__" + fname, default=None,
                               action=argparse.BooleanOptionalAction, help=help_text)
        else:
            group.add_argument(_flag(fname), dest="method__" + fname, default=None, type=kind,
                               metavar=fname.upper(), help=help_text)

    _add_ptq_parser(sub)
    _add_prune_quantized_parser(sub)
    _add_compare_parsers(sub)
    p_sum = sub.add_parser("summary", help="per-layer memory table of a checkpoint")
    p_sum.add_argument("checkpoint", metavar="CKPT_OR_FILE",
                       help="a checkpoint written by apb train (last.pt/best.pt) or a packed "
                            "model file")
    p_sum.add_argument("--json", default=None, metavar="FILE", help="also write it as JSON")

    p_pack = sub.add_parser(
        "pack", help="pack a trained checkpoint into a safetensors inference file",
        description="Turn every compressed layer of a checkpoint into its packed form (sign "
                    "bits, alpha, sparse full-precision corrections) and write it as "
                    "safetensors with JSON metadata; the file's size minus its header is the "
                    "model_bytes apb summary predicts.",
    )
    p_pack.add_argument("checkpoint", help="a checkpoint written by apb train (last.pt/best.pt)")
    p_pack.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="the packed model file to write (.safetensors)")

    p_xor = sub.add_parser(
        "xor-encode", help="XOR-gate encrypt a packed model's sparse bit-planes",
        description="Encrypt every packed layer's bit-planes with a seeded random XOR-gate "
                    "network (pruned weights and APB signs implied by the CSR part are "
                    "don't-care bits), store the pruning mask beside them, and write the "
                    "result as safetensors with JSON metadata; print bits per weight per "
                    "layer (encrypted, patches, mask, total) against CSR and bitmap. "
                    "apb xor-decode gives the packed model back.",
    )
    p_xor.add_argument("packed", metavar="FILE", help="a packed model file (from apb pack)")
    p_xor.add_argument("-o", "--output", required=True, metavar="OUT",
                       help="the XOR-encoded file to write (.safetensors)")
    p_xor.add_argument("--seed", type=int, default=0, help="the XOR network's seed")
    p_xor.add_argument("--scheme", default="auto", choices=["auto", "xor", "plain"],
                       help="auto: XOR where it beats the dense planes, the care bits as they "
                            "are elsewhere; xor / plain: always that")
    p_xor.add_argument("--json", default=None, metavar="FILE", help="also write the report")

    p_xdec = sub.add_parser(
        "xor-decode", help="decode an XOR-encoded file back into its packed model file",
        description="Decode every layer (checked against its recorded sha256) and write the "
                    "packed model the file was encoded from.",
    )
    p_xdec.add_argument("encoded", metavar="FILE", help="a file written by apb xor-encode")
    p_xdec.add_argument("-o", "--output", required=True, metavar="OUT",
                        help="the packed model file to write (.safetensors)")

    p_eval = sub.add_parser(
        "eval", help="test accuracy and size of a checkpoint or a packed model file",
        description="Evaluate a checkpoint (fake-quantized training model) or a packed "
                    "model file on a dataset's test split; prints and optionally writes "
                    "test_acc, model_bytes, bits_per_weight and predictions_sha256 (sha256 "
                    "of the int64 argmax predictions in test-set order).",
    )
    p_eval.add_argument("model", metavar="CKPT_OR_FILE",
                        help="a checkpoint (.pt) or a packed model (.safetensors)")
    p_eval.add_argument("--dataset", required=True, help="dataset name, apb.data.available()")
    p_eval.add_argument("--data-dir", default=None, metavar="DIR",
                        help="where the dataset's files are (not needed for mnist5k, digits)")
    p_eval.add_argument("--batch-size", type=int, default=256, metavar="N",
                        help="samples per forward")
    p_eval.add_argument("--json", default=None, metavar="FILE", help="also write it as JSON")

    p_demo = sub.add_parser(
        "demo", help="the main job: fp, BNN and APB LeNet-5 on the real MNIST-5k digits",
        description="Train fp, bnn and apb LeNet-5 models on mnist5k with several seeds, print "
                    "mean ± std test accuracy and memory, save checkpoints and JSON.",
    )
    _add_dataclass_flags(p_demo, DemoConfig, skip=("methods",))

    p_bench = sub.add_parser("bench", help="benchmarks against peers measured in the same run")
    bench_sub = p_bench.add_subparsers(dest="bench", required=True, metavar="BENCH",
                                       parser_class=_Parser)
    p_gemm = bench_sub.add_parser(
        "gemm", help="bitwise GEMM kernels vs torch fp32/int8 and ONNX Runtime int8",
        description="Time apb's GEMM kernels and their peers on the same shapes, threads "
                    "and machine; print ms and ratios, optionally write JSON and a plot.",
    )
    p_gemm.add_argument("--shapes", default="resnet18", choices=["resnet18", "sweep"],
                        help="resnet18: the 7 (M, K, N) convolution GEMMs of ResNet-18; "
                             "sweep: square 64 to 2048")
    p_gemm.add_argument("--threads", type=int, default=1, help="threads for every impl")
    p_gemm.add_argument("--repeats", type=int, default=10, help="timed runs (median)")
    p_gemm.add_argument("--impls", default=None,
                        help="comma-separated subset (default: all)")
    p_gemm.add_argument("--json", default=None, metavar="FILE", help="write the report here")
    p_gemm.add_argument("--plot", default=None, metavar="FILE.png", help="bar chart of totals")
    p_model = bench_sub.add_parser(
        "model", help="batch-1 latency of a packed APB network vs torch fp32 and int8",
        description="Build the architecture three ways (packed APB with BatchNorms folded, "
                    "torch fp32 with BatchNorms folded, torch int8 by FX graph mode "
                    "calibrated on random inputs), time batch-1 inference in the same "
                    "process and threads, print ms and speed-ups, optionally write JSON.",
    )
    p_model.add_argument("--model", default="resnet18", choices=["resnet18", "resnet20"],
                         help="resnet18 (224x224 inputs) or resnet20 (32x32)")
    p_model.add_argument("--act-bits", type=int, default=2, choices=[1, 2],
                         help="activation bits of the APB model")
    p_model.add_argument("--fp-fraction", type=float, default=0.02,
                         help="share of full-precision weights in the APB model")
    p_model.add_argument("--threads", type=int, default=1, help="threads for every model")
    p_model.add_argument("--repeats", type=int, default=10,
                         help="timed forwards per model (median)")
    p_model.add_argument("--json", default=None, metavar="FILE", help="write the report here")
    p_bxor = bench_sub.add_parser(
        "xor", help="XOR-gate encryption of random pruned weights: bits, losslessness, speed",
        description="Encrypt N random B-bit weights with a fraction P pruned; report bits per "
                    "weight (encrypted + patches, mask, total; CSR and bitmap of the same "
                    "matrix), whether decoding is lossless, encoding seconds and one-thread "
                    "decoding speed in GB/s of decoded weight bits, beside memcpy and a numpy "
                    "bitmap scatter measured in the same run.",
    )
    p_bxor.add_argument("--weights", type=int, default=1_000_000, metavar="N",
                        help="weights in the layer")
    p_bxor.add_argument("--prune", type=float, default=0.91, metavar="P",
                        help="fraction of weights pruned (exactly round(P*N), random positions)")
    p_bxor.add_argument("--bits", type=int, default=1, metavar="B", help="bit-planes per weight")
    p_bxor.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p_bxor.add_argument("--repeats", type=int, default=50, help="timed decodes (median)")
    p_bxor.add_argument("--json", default=None, metavar="FILE", help="write the report here")
    return parser


def _all_docs(cls) -> str:
    return "\n".join((c.__doc__ or "") for c in cls.__mro__)


def _add_ptq_parser(sub) -> None:
    from .ptq_job import METHODS, PTQJob

    p_ptq = sub.add_parser(
        "ptq", help="compress a trained fp checkpoint after training (OBC, post-training APB)",
        description="Post-training compression from a calibration set, no retraining: OBC "
                    "pruning / quantization and post-training APB. Writes a checkpoint that "
                    "apb summary reads; flags are the fields of apb.ptq_job.PTQJob.",
    )
    p_ptq.add_argument("checkpoint", metavar="CKPT", help="a full-precision checkpoint")
    p_ptq.add_argument("-o", "--output", required=True, metavar="OUT",
                       help="the compressed checkpoint to write")
    _add_dataclass_flags(p_ptq, PTQJob, skip=("checkpoint", "output", "method", "target"))
    p_ptq.add_argument("--method", required=True, choices=METHODS, help="what to do")
    p_ptq.add_argument("--target", required=True,
                       help="e.g. 0.5 (obc-prune), 2:4, 4 (obc-quant), sparsity=0.5,bits=4, "
                            "1.6 (apb-ptq: bits per weight), model_bytes=20000")


def _add_compare_parsers(sub) -> None:
    from .compare import CompareConfig

    p_cmp = sub.add_parser(
        "compare", help="every method on one harness: accuracy, memory, latency, Pareto plot",
        description="Train and compress one model with every listed method and several "
                    "seeds (same training budget), then report test accuracy (mean ± std), "
                    "bits per weight, model bytes and CPU latency at batch 1 and 64; JSON, a "
                    "markdown table and a Pareto plot. Flags are the fields of "
                    "apb.compare.CompareConfig; method names are described in "
                    "apb.compare.spec (e.g. fp, bnn, dorefa2, magnitude@0.9, "
                    "magnitude@0.9+bnn, quantized-pruning@0.25, obc-compound@0.5/2, apb-ptq@1.6, "
                    "apb@0.02).",
    )
    _add_dataclass_flags(p_cmp, CompareConfig)

    p_hist = sub.add_parser(
        "plot-weights", help="histogram of an APB layer's latent weights with its band",
        description="Draw the latent-weight histogram of one APB layer of a checkpoint: the "
                    "binarized band |w| <= alpha + delta... and the full-precision tails "
                    "outside it, marked at alpha and alpha ± delta.",
    )
    p_hist.add_argument("checkpoint", metavar="CKPT", help="a checkpoint of an APB model")
    p_hist.add_argument("--layer", default=None, metavar="NAME",
                        help="the layer (default: every APB layer, one panel each)")
    p_hist.add_argument("-o", "--output", required=True, metavar="FILE.png",
                        help="the picture to write")


def _cmd_compare(args) -> int:
    from .compare import CompareConfig, run_compare

    fields = {f.name for f in dataclasses.fields(CompareConfig)}
    import shlex

    run_compare(CompareConfig(**{k: v for k, v in vars(args).items() if k in fields}),
                command=shlex.join(["apb", *sys.argv[1:]]))
    return 0


def _cmd_plot_weights(args) -> int:
    from .plot_weights import plot_weights

    layers = plot_weights(args.checkpoint, args.output, layer=args.layer)
    print(f"wrote {args.output}: {', '.join(layers)}")
def _add_prune_quantized_parser(sub) -> None:
    from .quantized_pruning_job import JOB_SKIP, QuantizedPruningJob

    p = sub.add_parser(
        "prune-quantized",
        help="remove filters of a binary/DoReFa checkpoint to a size budget (BO ratios)",
        description="Filter pruning of a trained binary (bnn) or DoReFa network: per-layer "
                    "ratios by Bayesian optimisation (optuna) under a budget in model bytes, "
                    "compared with uniform ratios at the same budget and fine-tuning. Writes "
                    "the pruned checkpoint (apb summary / eval / pack read it); flags are the "
                    "fields of apb.quantized_pruning_job.QuantizedPruningJob.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a bnn or dorefa checkpoint")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="the pruned checkpoint to write")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-bytes", type=int, default=None, metavar="B",
                        help="size budget in model bytes (apb summary's accounting)")
    budget.add_argument("--budget-ratio", type=float, default=None, metavar="R",
                        help="size reduction: at most (1 - R) times the unpruned model bytes")
    _add_dataclass_flags(p, QuantizedPruningJob, skip=JOB_SKIP)


def _cmd_prune_quantized(args) -> int:
    from .quantized_pruning_job import QuantizedPruningJob, run_quantized_pruning_job

    fields = {f.name for f in dataclasses.fields(QuantizedPruningJob)}
    run_quantized_pruning_job(
        QuantizedPruningJob(**{k: v for k, v in vars(args).items() if k in fields}))
    return 0


def _cmd_ptq(args) -> int:
    from .ptq_job import PTQJob, run_ptq_job

    fields = {f.name for f in dataclasses.fields(PTQJob)}
    run_ptq_job(PTQJob(**{k: v for k, v in vars(args).items() if k in fields}))
    return 0


def _cmd_train(args) -> int:
    from .train import TrainConfig, train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    method_options = dict(values.get("method_options") or {})
    method_options.update({
        k[len("method__"):]: v for k, v in vars(args).items()
        if k.startswith("method__") and v is not None
    })
    values["method_options"] = method_options
    from .methods import create

    create(values["method"], **method_options)  # validate before any file is touched
    result = train(TrainConfig(**values))
    print(f"best test acc {result.best_test_acc:.4f}, final {result.final_test_acc:.4f}; "
          f"bits/weight {result.stats['bits_per_weight']:.3f}; checkpoints in {result.out_dir}")
    return 0


def _cmd_summary(args) -> int:
    from .evaluation import is_packed_file
    from .io import atomic_write_text
    from .pack import load_packed
    from .summary import summary
    from .train import build_model_from_checkpoint

    if is_packed_file(args.checkpoint):
        model = load_packed(args.checkpoint)
    else:
        model, _ = build_model_from_checkpoint(args.checkpoint)
    s = summary(model)
    print(s.table())
    if args.json:
        atomic_write_text(args.json, json.dumps(s.to_dict(), indent=2) + "\n")
    return 0


def _cmd_pack(args) -> int:
    from .evaluation import is_packed_file
    from .pack import pack_, save_packed
    from .summary import summary
    from .train import build_model_from_checkpoint

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


def _cmd_eval(args) -> int:
    from .evaluation import evaluate_file
    from .io import atomic_write_text

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    result = evaluate_file(args.model, args.dataset, data_dir=args.data_dir,
                           batch_size=args.batch_size)
    print(f"{args.model} on {args.dataset}: test acc {result['test_acc']:.4f}, "
          f"{result['model_bytes']:,} model bytes, {result['bits_per_weight']:.3f} bits/weight, "
          f"predictions sha256 {result['predictions_sha256']}")
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


def _cmd_demo(args) -> int:
    from .demo import DemoConfig, run_demo

    fields = {f.name for f in dataclasses.fields(DemoConfig)}
    config = DemoConfig(**{k: v for k, v in vars(args).items() if k in fields})
    run_demo(config)
    return 0


def _cmd_xor_encode(args) -> int:
    from .io import atomic_write_text
    from .pack.xor import encode_file, is_xor_file

    if is_xor_file(args.packed):
        raise CLIError(f"{args.packed} is already XOR-encoded; apb xor-encode takes a packed "
                       "model (from apb pack)")
    report = encode_file(args.packed, args.output, seed=args.seed, scheme=args.scheme,
                         progress=sys.stderr.isatty())
    print(report.table(), end="")
    print(f"wrote {args.output}")
    if args.json:
        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=2) + "\n")
    return 0


def _cmd_xor_decode(args) -> int:
    from .pack.xor import decode_file

    info = decode_file(args.encoded, args.output)
    print(f"decoded {args.encoded} -> {args.output}: {info.file_bytes:,} bytes "
          f"({info.model_bytes:,} model bytes + {info.header_bytes:,} header), every layer "
          "checked against its checksum")
    return 0


def _cmd_bench(args) -> int:
    from .io import atomic_write_text

    if args.bench == "model":
        return _cmd_bench_model(args)
    if args.bench == "xor":
        return _cmd_bench_xor(args)
    from .bench.gemm import SHAPE_SETS, plot_report, report_table, run_gemm_benchmark

    impls = [i.strip() for i in args.impls.split(",")] if args.impls else None
    report = run_gemm_benchmark(SHAPE_SETS[args.shapes], impls=impls, threads=args.threads,
                                repeats=args.repeats)
    print(report_table(report))
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot_report(report, args.plot)
    return 0


def _cmd_bench_model(args) -> int:
    from rich.console import Console

    from .bench.model import report_table, run_model_benchmark
    from .io import atomic_write_text

    with Console(stderr=True).status("apb bench model") as status:
        report = run_model_benchmark(args.model, args.act_bits, threads=args.threads,
                                     repeats=args.repeats, fp_fraction=args.fp_fraction,
                                     progress=status.update)
    print(report_table(report))
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0


def _cmd_bench_xor(args) -> int:
    from .bench.xor import report_table, run_xor_benchmark
    from .io import atomic_write_text

    report = run_xor_benchmark(args.weights, args.prune, args.bits, seed=args.seed,
                               repeats=args.repeats)
    print(report_table(report), end="")
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0


COMMANDS = {"train": _cmd_train, "ptq": _cmd_ptq, "prune-quantized": _cmd_prune_quantized,
            "summary": _cmd_summary, "pack": _cmd_pack, "xor-encode": _cmd_xor_encode,
            "xor-decode": _cmd_xor_decode, "eval": _cmd_eval, "demo": _cmd_demo,
            "compare": _cmd_compare, "plot-weights": _cmd_plot_weights,
            "bench": _cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("apb: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError, CLIError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"apb {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
