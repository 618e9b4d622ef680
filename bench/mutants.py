"""The mutant table of bench/mutation.py: one-line mistakes in onnxq/ and passes/, and the tests each runs first.

A mutant replaces one exact snippet of one file with what a careless edit would leave (off by one, the wrong
axis, a flipped comparison, a dropped clamp, a wrong default, swapped operands, a skipped check). Its ``tests``
are a generous area of the suite (the module's own tests and the end-to-end tests that exercise it); a mutant
that survives them is run again on the whole suite (bench/mutation.py's second stage), so that it does not
count as a survivor merely because its area was guessed too narrow. ``equivalent`` holds the one-line reason
for a mutant that cannot change behaviour; such mutants are not run.
"""

# ruff: noqa: E501  (the mutant table is data: one mutant a line)
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    equivalent: str | None = None  # why the mutant cannot change behaviour (then it is not run)


def _t(*names: str) -> tuple[str, ...]:
    return tuple(f"tests/test_{n}.py" for n in names)


# areas of the suite, each generous: the module's tests and the end-to-end ones that go through it
CORE = _t(
    "guards",
    "numeric_guards",
    "safety_promises",
    "pass_guards",
    "qtypes",
    "qdq",
    "quantize",
    "calibrate",
    "targets_and_eps",
    "cuda_target",
    "pipeline",
    "sample_models",
    "attention_mask",
    "subgraph_weights",
    "fuse_activations",
    "feeds",
)
PREP = _t(
    "guards",
    "pass_guards",
    "prepare",
    "fuse_activations",
    "quantize",
    "pipeline",
    "qdq",
    "cle",
    "model_io",
    "sample_models",
)
CLE = _t("guards", "pass_guards", "cle", "bias_correction", "pipeline", "quantize", "adaround")
BC = _t("guards", "pass_guards", "bias_correction", "adaround", "cle", "pipeline", "quantize")
ADA = _t("guards", "pass_guards", "adaround", "adaround_ops", "pipeline", "bias_correction", "quantize")
SQ = _t("guards", "pass_guards", "smoothquant", "pipeline", "dynamic", "attention_mask")
DYN = _t("guards", "pass_guards", "dynamic", "quantize", "pipeline", "evaluate", "feeds")
FP16 = _t("guards", "pass_guards", "fp16", "bench", "cuda_options", "model_io", "output_paths", "runtime")
DATA = _t(
    "guards",
    "safety_promises",
    "data_files",
    "feeds",
    "feeds_nontensor",
    "calibrate",
    "evaluate",
    "quantize",
    "corruption",
    "backend_suite",
    "attention_mask",
)
MODEL = _t(
    "guards",
    "safety_promises",
    "model_io",
    "output_paths",
    "corruption",
    "cli_errors",
    "inspect",
    "quantize",
    "fp16",
    "run",
    "report",
)
MEASURE = _t("guards", "measure_guards", "evaluate", "bench", "report", "run", "runtime", "feeds", "cuda_options")
RUNTIME = _t("guards", "runtime", "cuda_options", "targets_and_eps", "ort_log", "bench", "evaluate", "gpu", "rebatch")
CLI = _t(
    "guards",
    "measure_guards",
    "cli_errors",
    "quantize",
    "output_paths",
    "run",
    "inspect",
    "pipeline",
    "evaluate",
    "bench",
    "fp16",
    "dynamic",
)
REPORT = _t("guards", "measure_guards", "report", "output_paths", "bench", "run", "evaluate")
RECIPE = _t(
    "guards",
    "option_guards",
    "pipeline",
    "quantize",
    "targets_and_eps",
    "adaround",
    "bias_correction",
    "cle",
    "smoothquant",
    "dynamic",
    "cli_errors",
    "cuda_target",
    "readme_example",
)

QOP = _t("guards", "pass_guards", "qoperator", "qoperator_guards", "qoperator_malformed", "lint", "quantize", "pipeline", "cli_errors")

PAD = _t("padding", "attention_mask", "calibrate", "range_cache")

MIX = _t("mixed_precision", "qdq", "pipeline", "quantize", "guards")

ANA = _t("analyze", "cli_usage", "report")

M = Mutant
MUTANTS = [
    # --- safety promises: no pickle, no read outside the model folder, atomic writes, output != input, no silent fallback
    M("object arrays accepted", "onnxq/data_files.py", "    if dtype.hasobject or dtype.kind not in _NUMERIC_KINDS", "    if dtype.kind not in _NUMERIC_KINDS + 'O'", DATA),
    M("labels.npy unpickled", "onnxq/feeds.py", "labels = np.load(path, allow_pickle=False)", "labels = np.load(path, allow_pickle=True)", DATA),
    M("external data outside the folder", "onnxq/model_files.py", "    if base != target and base not in target.parents:", "    if False:", MODEL),
    M("absolute external path unchecked", "onnxq/model_files.py", "        os.path.isabs(location)\n        or location", "        False\n        and location", MODEL),
    M("external data symlinks not followed", "onnxq/model_files.py", "        target = (model_dir / location).resolve()  # follows", "        target = Path(os.path.normpath(model_dir / location))  # follows", MODEL),
    M("external tensor in a data .pb read", "onnxq/feeds.py", "    if tensor.data_location == onnx.TensorProto.EXTERNAL:", "    if False:", DATA),
    M("external span past the file", "onnxq/model_files.py", "        if offset > size or (length is not None and offset + length > size):", "        if offset > size:", MODEL),
    M("output may equal input", "onnxq/model.py", "    if input_path is not None and same_file(out, Path(input_path)):", "    if False:", MODEL),
    M("same file by spelling only", "onnxq/model_files.py", "            return os.path.samefile(a, b)", "            return a == b", MODEL),
    M("output may be a data input", "onnxq/model_files.py", "        if isinstance(source, (str, os.PathLike)) and same_file(out, Path(source)):", "        if False:", MODEL),
    M("output may be the input's external data", "onnxq/model.py", '        refuse_inputs_as_output(out, data_files, "output path")', "        pass", MODEL),
    M("quantize checks only the model path", "onnxq/quantize/driver.py", '    check_output_path(output_path, model_path, inputs=[("the calibration data", calib)])', "    check_output_path(output_path, model_path)", MODEL + ("tests/test_feeds.py",)),
    M("model written in place", "onnxq/model_files.py", "    fd, tmp = open_temp_beside(final)\n    try:\n        with os.fdopen(fd, \"wb\") as fh:\n            fh.write(payload)", "    fd, tmp = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666), str(final)\n    try:\n        with os.fdopen(fd, \"wb\") as fh:\n            fh.write(payload)", MODEL),
    M("temp file left on failure", "onnxq/model_files.py", "as fh:\n            fh.write(payload)\n            fh.flush()\n            os.fsync(fh.fileno())\n    except BaseException:\n        unlink_quietly(tmp)", "as fh:\n            fh.write(payload)\n            fh.flush()\n            os.fsync(fh.fileno())\n    except BaseException:\n        pass", MODEL),
    M("failed data rename not rolled back", "onnxq/model_files.py", "    except OSError as exc:\n        _roll_back(data, model_tmp, done)", "    except OSError as exc:\n        pass", MODEL),
    M("report file opened before rendering", "onnxq/report/document.py", "    text = render(report, suffix)  # render before", '    out.write_text(""); text = render(report, suffix)  # render before', REPORT),
    M("report may overwrite an input", "onnxq/report/document.py", '    refuse_inputs_as_output(out, inputs, "report")', "    pass", REPORT),
    M("partial fallback allowed", "onnxq/runtime/placement.py", "    if not spec.allow_fallback:\n        raise ProviderError(\n            f\"partial fallback", "    if False:\n        raise ProviderError(\n            f\"partial fallback", RUNTIME),
    M("dropped EP allowed", "onnxq/runtime/placement.py", "        if not spec.allow_fallback:\n            raise ProviderError(\n                f\"the {spec.ep} EP did not run", "        if False:\n            raise ProviderError(\n                f\"the {spec.ep} EP did not run", RUNTIME),
    M("float nodes counted as shape nodes", "onnxq/runtime/placement.py", "        return all(t in _INT_TYPES for t in output_types)", "        return True", RUNTIME),
    M("overridable initializers counted constant", "onnxq/runtime/placement.py", "    known = {t.name for t in graph.initializer} - {i.name for i in graph.input}", "    known = {t.name for t in graph.initializer}", RUNTIME),
    M("EP availability unchecked", "onnxq/runtime/session.py", "    if EP_PROVIDERS[ep] not in available:", "    if False:", RUNTIME),
    M("EP gets no node unnoticed", "onnxq/runtime/placement.py", "    if want not in kept_providers or on_ep == 0:", "    if want not in kept_providers:", RUNTIME),
    # --- the pipeline driver
    M("mutation check off", "onnxq/quantize/pipeline.py", "if before is not None and model_fingerprint(model) != before:", "if False:", ("tests/test_pipeline.py",)),
    M("order check off", "onnxq/quantize/pipeline.py", "        missing = [n for n in spec.needs if n not in have]", "        missing = []", ("tests/test_pipeline.py",)),
    M("history not named", "onnxq/quantize/pipeline.py", '    return f"{hint} {history}" if hint else history', "    return hint or ''", ("tests/test_pipeline.py",)),
    M("result type unchecked", "onnxq/quantize/pipeline.py", "    if not isinstance(result, PassResult):", "    if False:", ("tests/test_pipeline.py",)),
    M("phase order unchecked", "onnxq/quantize/pipeline.py", "        if previous is not None and spec.phase < previous.phase:", "        if False:", RECIPE),
    M("calibration requests skipped", "onnxq/quantize/pipeline.py", '        if "ranges" in step.spec.provides:', "        if False:", BC),
    M("finite-output check skipped", "onnxq/quantize/driver.py", "    if ctx is not None and ctx.calib is not None:\n        _check_finite_outputs", "    if False:\n        _check_finite_outputs", CORE),
    M("quantized input accepted", "onnxq/quantize/driver.py", "    if already:\n        found", "    if False:\n        found", CORE + ("tests/test_cli_errors.py",)),
    # --- the recipe and its parser
    M("unknown option accepted", "onnxq/quantize/options.py", "        if name not in known:", "        if False:", RECIPE),
    M("bool accepted as int", "onnxq/quantize/options.py", "        if isinstance(value, bool) or not isinstance(value, int):", "        if not isinstance(value, int):", RECIPE),
    M("pass option dashes kept", "onnxq/quantize/options.py", '        name = str(key).replace("-", "_")\n        name = aliases.get(name, name)', "        name = str(key)\n        name = aliases.get(name, name)", RECIPE),
    M("NaN accepted as a number", "onnxq/quantize/options.py", " or not math.isfinite(value):", ":", RECIPE),
    M("stray pass options accepted", "onnxq/quantize/recipe.py", "        if stray:", "        if False:", RECIPE),
    M("recipe percentile default 99.9", "onnxq/quantize/recipe.py", "    percentile: float = 99.99\n    calib_samples", "    percentile: float = 99.9\n    calib_samples", RECIPE),
    M("calib_samples 0 accepted", "onnxq/quantize/recipe.py", "        if self.calib_samples is not None and self.calib_samples < 1:", "        if self.calib_samples is not None and self.calib_samples < 0:", RECIPE),
    M("dynamic with asymmetric weights accepted", "onnxq/quantize/recipe.py", "        if self.symmetric_activations or not self.symmetric_weights:", "        if self.symmetric_activations:", RECIPE),
    M("tensorrt activations not symmetric", "onnxq/quantize/targets.py", '    "symmetric_activations": True,\n    "zero_point_zero": True,', '    "symmetric_activations": False,\n    "zero_point_zero": True,', RECIPE),
    M("asymmetric weights on tensorrt", "onnxq/quantize/targets.py", "    if target.zero_point_zero and not symmetric_weights:", "    if False:", RECIPE),
    M("ort default weights uint8", "onnxq/quantize/targets.py", '            weight_type="int8",\n            symmetric_activations=False,', '            weight_type="uint8",\n            symmetric_activations=False,', RECIPE),
    # --- data as feeds, data files
    M("batch axis always 0", "onnxq/feeds.py", "        axes = {s.name: (s.shape.index(common[0]) if common else 0) for s in dynamic}", "        axes = {s.name: 0 for s in dynamic}", DATA),
    M("feeds joined across shapes", "onnxq/feeds.py", "        elif x.ndim != y.ndim or x.shape[:axis] + x.shape[axis + 1 :] != y.shape[:axis] + y.shape[axis + 1 :]:", "        elif x.ndim != y.ndim:", DATA),
    M("unbatched inputs not compared", "onnxq/feeds.py", "            if x.shape != y.shape or not np.array_equal(x, y):", "            if x.shape != y.shape:", DATA),
    M("test-data sets in name order", "onnxq/feeds.py", "    \"\"\"The feeds of a test-data folder, in set order (test_data_set_2 before test_data_set_10).\n\n    ``skip_outputs`` names outputs whose files are not read: a sequence, optional or map output is stored as\n    another proto than a TensorProto (one that parses as garbage tensor), and no metric compares it.\n    \"\"\"\n    sets = sorted((int(m.group(1)), p)", "    \"\"\"The feeds of a test-data folder, in set order (test_data_set_2 before test_data_set_10).\n\n    ``skip_outputs`` names outputs whose files are not read: a sequence, optional or map output is stored as\n    another proto than a TensorProto (one that parses as garbage tensor), and no metric compares it.\n    \"\"\"\n    sets = sorted((m.group(1), p)", DATA),
    M("feed groups overfill the batch", "onnxq/feeds.py", "            and sum(counts[j] for j in group) + counts[i] <= batch_size", "            and sum(counts[j] for j in group) <= batch_size", DATA),
    M("gaps in input_*.pb numbering", "onnxq/feeds.py", "        if [i for i, _ in items] != list(range(len(items))):", "        if False:", DATA),
    M("NaN in feeds accepted", "onnxq/data.py", "    if finite.all():\n        return", "    if True:\n        return", DATA),
    M("fixed dims unchecked", "onnxq/data.py", "        if isinstance(want, int) and got != want:", "        if False:", DATA),
    M("short last batch fed to a fixed-batch graph", "onnxq/data.py", "            if stop - start < bs and self.fixed_batch_size():\n                break", "            if False:\n                break", DATA),
    M("fortran-order arrays read as C order", "onnxq/data_files.py", "        return flat.reshape(header.shape[::-1]).transpose()", "        return flat.reshape(header.shape)", DATA),
    M("data cap not charged", "onnxq/data_files.py", "        self.left -= header.nbytes", "        self.left -= 0", DATA),
    M("sample cap unchecked", "onnxq/data_files.py", "        if header.shape and header.shape[0] > self.samples:", "        if False:", DATA),
    M("cap not read from the environment", "onnxq/data_files.py", '    text = os.environ.get(name, "").strip()', '    text = ""', DATA),
    M("encrypted members not refused", "onnxq/data_files.py", "        if info.flag_bits & 0x1:", "        if False:", DATA),
    M("non-regular data files opened", "onnxq/data_files.py", "        if not stat.S_ISREG(mode):", "        if False:", DATA),
    # --- quantization numerics: qtypes
    M("quantize rounds down", "onnxq/quantize/qtypes.py", "    q = np.rint(ratio).astype(np.float64) + zp.astype(np.float64)", "    q = np.floor(ratio).astype(np.float64) + zp.astype(np.float64)", CORE),
    M("quantize does not saturate", "onnxq/quantize/qtypes.py", "    return np.clip(q, qt.qmin, qt.qmax).astype(qt.storage)", "    return q.astype(qt.storage)", CORE),
    M("symmetric scale over the longer side", "onnxq/quantize/qtypes.py", "        scale64 = np.maximum(-lo_r, hi_r) / min(mid - lo, hi - mid)", "        scale64 = np.maximum(-lo_r, hi_r) / max(mid - lo, hi - mid)", CORE),
    M("asymmetric zero point sign", "onnxq/quantize/qtypes.py", "            zero_point = np.clip(np.rint(lo - lo_r / scale64), lo, hi)", "            zero_point = np.clip(np.rint(lo + lo_r / scale64), lo, hi)", CORE),
    M("range not widened to hold 0", "onnxq/quantize/qtypes.py", "    lo_r = np.minimum(lo_r, 0.0)", "    lo_r = lo_r", CORE),
    M("reduce_range int8 one short", "onnxq/quantize/qtypes.py", "        return -(2 ** (qt.bits - 2)), 2 ** (qt.bits - 2)", "        return -(2 ** (qt.bits - 2)), 2 ** (qt.bits - 2) - 1", CORE),
    M("dequantize ignores the zero point", "onnxq/quantize/qtypes.py", "    diff = q.astype(np.int64) - zp.astype(np.int64)", "    diff = q.astype(np.int64)", CORE),
    M("empty range zero point at qmax", "onnxq/quantize/qtypes.py", "    empty_zp = float((lo + hi + 1) // 2) if symmetric else float(np.clip(0, lo, hi))", "    empty_zp = float((lo + hi + 1) // 2) if symmetric else float(hi)", CORE),
    M("int32 divided in float32", "onnxq/quantize/qtypes.py", "        if qt.bits > 16:", "        if qt.bits > 32:", CORE),
    M("negative axis not normalised", "onnxq/quantize/qtypes.py", "    axis = qp.axis + ndim if qp.axis < 0 else qp.axis", "    axis = qp.axis", CORE),
    M("zero point range unchecked", "onnxq/quantize/qtypes.py", "        if ((zp < self.qtype.qmin) | (zp > self.qtype.qmax)).any():", "        if False:", CORE),
    M("per-channel opset ignores axis", "onnxq/quantize/qtypes.py", '    if per_channel and "axis" not in schema.attributes:', "    if False:", CORE),
    # --- observers
    M("percentile no interpolation", "onnxq/quantize/observers.py", "        frac = (target - below) / counts[b] if counts[b] else 1.0", "        frac = 1.0", CORE),
    M("percentile default 99.9", "onnxq/quantize/observers.py", "    def __init__(self, percentile: float = 99.99, num_bins: int = 2048)", "    def __init__(self, percentile: float = 99.9, num_bins: int = 2048)", CORE),
    M("entropy 256 quantized bins", "onnxq/quantize/observers.py", "    def __init__(self, num_bins: int = 2048, num_quantized_bins: int = 128, min_values_per_bin: float = 16)", "    def __init__(self, num_bins: int = 2048, num_quantized_bins: int = 256, min_values_per_bin: float = 16)", CORE),
    M("entropy keeps exact zeros", "onnxq/quantize/observers.py", "        counts[0] -= self.hist.zeros", "        counts[0] -= 0", CORE),
    M("entropy sparse check off", "onnxq/quantize/observers.py", "        if counts.sum() < self.min_values_per_bin * self.hist.num_bins:", "        if False:", CORE),
    M("entropy one-sided check misses negatives", "onnxq/quantize/observers.py", "        if self.hist.min > 0 or self.hist.max < 0:", "        if self.hist.min > 0:", CORE),
    M("KL outliers not in the last bin", "onnxq/quantize/observers.py", "    p_last = h[i - 1] + outliers", "    p_last = h[i - 1]", CORE),
    M("MSE grid shifted by one bin", "onnxq/quantize/observers.py", "        thresholds = np.arange(1, len(h) + 1) * w", "        thresholds = np.arange(0, len(h)) * w", CORE),
    M("MSE rounding error without /12", "onnxq/quantize/observers.py", "        return np.maximum(clip_err, 0.0) + inside * step**2 / 12.0, thresholds", "        return np.maximum(clip_err, 0.0) + inside * step**2, thresholds", CORE),
    M("MSE symmetric step over all levels", "onnxq/quantize/observers.py", "            step = np.maximum(-lo, hi) / ((self.num_levels - 1) // 2)", "            step = np.maximum(-lo, hi) / (self.num_levels - 1)", CORE),
    M("histogram merges too much", "onnxq/quantize/observers.py", "        group = 2**doublings if doublings < 63 else None", "        group = 2 ** (doublings + 1) if doublings < 63 else None", CORE),
    M("moving average sign", "onnxq/quantize/observers.py", "            self.min += self.averaging_constant * (bmin - self.min)", "            self.min += self.averaging_constant * (self.min - bmin)", CORE),
    M("clip ignores the data's own min", "onnxq/quantize/observers.py", "        return float(max(self.min, -threshold)), float(min(self.max, threshold))", "        return float(-threshold), float(min(self.max, threshold))", CORE),
    # --- calibration
    M("mask sentinel kept", "onnxq/quantize/calibrate.py", "MASK_SENTINEL = -1e30", "MASK_SENTINEL = -np.inf", CORE),
    M("calibration sample count per batch", "onnxq/quantize/calibrate.py", "            num_samples += n\n", "            num_samples += 1\n", CORE),
    M("auto batch size uncapped", "onnxq/quantize/calibrate.py", "    bs = int(max(1, min(MAX_AUTO_BATCH, AUTO_BATCH_BYTES // max(1, per_sample))))", "    bs = int(max(1, AUTO_BATCH_BYTES // max(1, per_sample)))", CORE),
    M("running means drop the unflushed part", "onnxq/quantize/calibrate.py", "        return {name: (self.sums[name] + self.partial[name]) / self.counts[name] for name in self.sums}", "        return {name: self.sums[name] / self.counts[name] for name in self.sums}", BC + ("tests/test_calibrate.py",)),
    M("graph outputs clipped", "onnxq/quantize/calibration.py", "    keep = {o.name for o in model.graph.output}", "    keep = set()", CORE),
    M("softmax input clipped", "onnxq/quantize/calibration.py", '        if node.op_type in ("Softmax", "LogSoftmax"):', '        if node.op_type in ("LogSoftmax",):', CORE),
    M("percentile option not passed", "onnxq/quantize/calibration.py", 'observer_opts={"percentile": cfg.percentile} if cfg.method == "percentile" else None', "observer_opts=None", CORE),
    M("exclusion names unchecked", "onnxq/quantize/calibration.py", "    if unknown:\n        close = difflib", "    if False:\n        close = difflib", CORE),
    M("unknown op type accepted", "onnxq/quantize/calibration.py", "        if not onnx.defs.has(op):", "        if False:", CORE),
    M("float boundaries never avoided", "onnxq/quantize/calibration.py", "    if cfg.avoid_float_boundaries:", "    if False:", CORE),
    # --- QDQ placement and writing
    M("clip fold any lower bound", "passes/qdq.py", "    return lo is not None and lo == 0.0", "    return lo is not None", CORE),
    M("relu fold into graph output", "passes/qdq.py", "or src in g.outputs or len(g.consumers[src]) != 1", "or len(g.consumers[src]) != 1", CORE),
    M("fold with symmetric activations", "passes/qdq.py", "    if cfg.act_symmetric or src not in quantized or src in g.outputs", "    if src not in quantized or src in g.outputs", CORE),
    M("bias overflow unchecked", "passes/qdq.py", "    if not (s_b <= np.finfo(np.float32).max).all():", "    if False:", CORE),
    M("bias scale without the input scale", "passes/qdq.py", "            s_b = (np.float64(self.act_qp[x_t].scale) * self.w_scale[w_key].astype(np.float64)).reshape(-1)", "            s_b = self.w_scale[w_key].astype(np.float64).reshape(-1)", CORE),
    M("bias rounded down", "passes/qdq.py", "    scaled = np.rint(b / s_b)", "    scaled = np.floor(b / s_b)", CORE),
    M("bias not saturated", "passes/qdq.py", "    q = np.clip(scaled, info.min, info.max).astype(np.int32)", "    q = scaled.astype(np.int32)", CORE),
    M("shared scale groups ignored", "passes/qdq.py", "        r = group_range.setdefault(plan.groups[t], [lo, hi])", "        r = group_range.setdefault(t, [lo, hi])", CORE),
    M("concat inputs not shared", "passes/qdq.py", '        if rule.family == "concat":', "        if False:", CORE),
    M("weight range over axis 0", "passes/qdq.py", "    red = tuple(a for a in range(w.ndim) if a != axis)", "    red = tuple(a for a in range(w.ndim) if a != 0)", CORE),
    M("shortcut picks the conv branch", "passes/qdq.py", "        return ins[1] if fusable[0] else ins[0]", "        return ins[0] if fusable[0] else ins[1]", CORE),
    M("binary op with a float input quantized", "passes/qdq.py", '    if rule.family == "binary" and not all(i in quantized for i in node.input):', "    if False:", CORE),
    M("graph output renamed", "passes/qdq.py", '        dq_out = t if is_output else f"{base}_dq"', '        dq_out = f"{base}_dq"', CORE),
    M("QDQ opset unchecked", "passes/qdq.py", "    if opset < need:", "    if False:", CORE),
    M("conv transpose weights on axis 0", "passes/placement.py", "        return 1  # weight is [C_in, C_out / group, k...]", "        return 0  # weight is [C_in, C_out / group, k...]", CORE),
    M("gemm transB axis swapped", "passes/placement.py", '        return 0 if attrs.get("transB", 0) else 1', '        return 1 if attrs.get("transB", 0) else 0', CORE),
    M("matmul weights per row", "passes/placement.py", "        return weight_rank - 1  # [.., K, N]", "        return weight_rank - 2  # [.., K, N]", CORE + ("tests/test_dynamic.py",)),
    M("kernel refusal off", "passes/placement.py", "    present = [a.name for a in node.attribute if a.name in rule.float_if_attrs]", "    present = []", CORE),
    M("float boundary ignores consumers", "passes/placement.py", "        near = [producer.get(node.input[0]), *consumers.get(out, [])]", "        near = [producer.get(node.input[0])]", CORE),
    M("maxpool output not shared", "passes/placement.py", '    OpRule("maxpool", ("MaxPool",), "first", "shared",', '    OpRule("maxpool", ("MaxPool",), "first", "always",', CORE),
    M("subgraph weights skipped", "passes/_subgraph_weights.py", "        if idx is None or len(node.input) <= idx or node.input[idx] not in consts:", "        if True:", CORE),
    # --- prepare: BatchNorm fold, bias Adds, hard-swish, shapes
    M("BN epsilon ignored", "passes/_fold_batchnorm.py", "        return self.gamma / np.sqrt(self.var + self.eps)", "        return self.gamma / np.sqrt(self.var)", PREP),
    M("BN shift sign", "passes/_fold_batchnorm.py", "        return self.beta - self.factor * self.mean", "        return self.beta + self.factor * self.mean", PREP),
    M("BN default epsilon 1e-3", "passes/_fold_batchnorm.py", '    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)', '    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-3)', PREP),
    M("BN folded into a shared output", "passes/_fold_batchnorm.py", "    if g.uses[bn.input[0]] != 1 or bn.input[0] in outputs:", "    if bn.input[0] in outputs:", PREP),
    M("BN scales conv input channels", "passes/_fold_batchnorm.py", "        new_weight = weight * bn.factor.reshape((-1,) + (1,) * (weight.ndim - 1))", "        new_weight = weight * bn.factor.reshape((1, -1) + (1,) * (weight.ndim - 2))", PREP),
    M("BN into Gemm ignores beta", "passes/_fold_batchnorm.py", '    new_c = bn.factor * (attrs.get("beta", 1.0) * c) + bn.shift', "    new_c = bn.factor * c + bn.shift", PREP),
    M("BN into Gemm on the wrong axis", "passes/_fold_batchnorm.py", "    new_weight = weight * (bn.factor[:, None] if trans_b else bn.factor[None, :])", "    new_weight = weight * (bn.factor[None, :] if trans_b else bn.factor[:, None])", PREP),
    M("target opset ignored", "passes/prepare.py", "    target = DEFAULT_TARGET_OPSET if target is None else target", "    target = DEFAULT_TARGET_OPSET", PREP),
    M("final shape inference skipped", "passes/prepare.py", "    _infer_shapes(work)\n    _check_valid(work)", "    _check_valid(work)", PREP),
    M("identity kept", "passes/prepare.py", "    if config.remove_identity:", "    if False:", PREP),
    M("dropout with a read mask removed", "passes/prepare.py", "    if len(node.output) > 1 and node.output[1] and uses[node.output[1]]:", "    if False:", PREP),
    M("bias Add with spatial extent folded", "passes/_fold_bias_add.py", "    if shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, channels):", "    if shape[0] != 1 or shape[1] not in (1, channels):", PREP),
    M("hard-swish of any clip fused", "passes/_fuse_activations.py", "    if clip is None or clip.op_type != \"Clip\" or uses[t] != 1 or _clip_bounds(clip, inits) != (0.0, 6.0):", "    if clip is None or clip.op_type != \"Clip\" or uses[t] != 1:", PREP),
    # --- CLE and high-bias absorption
    M("CLE scale inverted", "passes/cle.py", "    s[live] = np.sqrt(r1[live] / r2[live])", "    s[live] = np.sqrt(r2[live] / r1[live])", CLE),
    M("CLE bias multiplied", "passes/cle.py", "            params.set(name, params.vector(name, p.first, p.channels) / s)", "            params.set(name, params.vector(name, p.first, p.channels) * s)", CLE),
    M("CLE through ReLU6 without the flag", "passes/cle.py", '        if kind == "relu6" and not self.relu6_to_relu:', "        if False:", CLE),
    M("CLE through a negative LeakyRelu", "passes/cle.py", '            return "relu" if alpha >= 0 else "LeakyRelu with a negative slope is not handled"', '            return "relu"', CLE,
      equivalent="LeakyRelu(x / s) = LeakyRelu(x) / s for s > 0 whatever the slope's sign, and absorption only uses x >= c > 0: equalizing through it keeps the float function, the check is only conservative"),
    M("CLE through a Clip with a non-zero floor", "passes/cle.py", "            if lo == 0.0 and hi is None:", "            if hi is None:", CLE),
    M("CLE stops after one sweep", "passes/cle.py", "        if worst < cfg.tolerance:", "        if True:", CLE),
    M("CLE on shared weights", "passes/cle.py", "            if name and self.uses[name] != 1:", "            if False:", CLE),
    M("CLE leaves BN stats stale", "passes/cle.py", "        if entry is not None and np.shape(entry.mean) == s.shape:", "        if False:", CLE),
    M("absorption into a padded conv", "passes/_absorb.py", '        if p.second.kind in ("conv", "depthwise") and conv_has_padding(p.second.node):', "        if False:", CLE),
    M("absorption ignores the data minimum", "passes/_absorb.py", '            out[p.label] = np.minimum(s["min"], s["mean"] - cfg.absorption_sigmas * s["std"])', '            out[p.label] = s["mean"] - cfg.absorption_sigmas * s["std"]', CLE),
    M("absorption of negative amounts", "passes/_absorb.py", "        c = np.maximum(lower[p.label], 0.0)", "        c = lower[p.label]", CLE),
    M("absorption on too few values", "passes/_absorb.py", '            if s["count"] < MIN_VALUES_PER_CHANNEL:', "            if False:", CLE),
    M("absorption ignores Gemm beta", "passes/_absorb.py", "    params.set(name, params.vector(name, p.first, p.channels) - c / beta)", "    params.set(name, params.vector(name, p.first, p.channels) - c)", CLE),
    # --- bias correction
    M("weight error sign", "passes/bias_correction.py", "        dw = dequantize(np.asarray(q), qp).astype(np.float64) - w.astype(np.float64)", "        dw = w.astype(np.float64) - dequantize(np.asarray(q), qp).astype(np.float64)", BC),
    M("Gemm correction without alpha", "passes/bias_correction.py", "            eps[t.name] = t.layer.alpha * ((t.dw @ m) if t.layer.in_axis == 1 else (m @ t.dw))", "            eps[t.name] = (t.dw @ m) if t.layer.in_axis == 1 else (m @ t.dw)", BC),
    M("Gemm correction without beta", "passes/bias_correction.py", '        e = eps[t.name] / (t.layer.beta if t.kind == "gemm" and t.bias_kind == "bias" else 1.0)', "        e = eps[t.name]", BC),
    M("sequential correction stops after one round", "passes/bias_correction.py", "        if change is not None and change <= cfg.tolerance:", "        if True:", BC),
    M("calibration means used for a sample subset", "passes/bias_correction.py", "    all_samples = cfg.samples is None or (ctx.calib is not None and cfg.samples >= len(ctx.calib))", "    all_samples = True", BC),
    M("shared bias corrected", "passes/bias_correction.py", "        if uses[layer.bias] != 1:", "        if False:", BC),
    M("clipped normal mean sign", "passes/_normal_moments.py", "        inside = mu * (_cdf(b) - _cdf(a)) + safe * (_phi(a) - _phi(b))", "        inside = mu * (_cdf(b) - _cdf(a)) + safe * (_phi(b) - _phi(a))", BC),
    M("leaky relu default slope", "passes/_normal_moments.py", '    "LeakyRelu": lambda z, a: np.where(z >= 0, z, a.get("alpha", 0.01) * z),', '    "LeakyRelu": lambda z, a: np.where(z >= 0, z, a.get("alpha", 0.1) * z),', BC),
    # --- AdaRound
    M("adaround zeta 1.0", "passes/_adaround_opt.py", "ZETA = 1.1", "ZETA = 1.0", ADA),
    M("adaround gamma 0", "passes/_adaround_opt.py", "GAMMA = -0.1", "GAMMA = 0.0", ADA),
    M("layers_kept_nearest hard-wired", "passes/adaround.py", '        "layers_kept_nearest": sum(r["kept_nearest"] for r in per_layer),', '        "layers_kept_nearest": 0,', ADA),
    M("never_worse ignored", "passes/adaround.py", "    kept_nearest = cfg.never_worse and mse_adaround > mse_nearest", "    kept_nearest = mse_adaround > mse_nearest", ADA),
    M("beta annealed upwards", "passes/_adaround_opt.py", "    return end + 0.5 * (start - end) * (1 + math.cos(rel * math.pi))", "    return start + 0.5 * (end - start) * (1 + math.cos(rel * math.pi))", ADA),
    M("no warm start", "passes/_adaround_opt.py", "    if it < warm:\n        return None", "    if False:\n        return None", ADA),
    M("regularizer gradient sign", "passes/_adaround_opt.py", "    grad = -lam * beta * a ** (beta - 1) * np.sign(d) * 2", "    grad = lam * beta * a ** (beta - 1) * np.sign(d) * 2", ADA),
    M("Adam without bias correction", "passes/_adaround_opt.py", "        step = self.lr * math.sqrt(1 - self.b2**self.t) / (1 - self.b1**self.t)", "        step = self.lr", ADA),
    M("soft weight ignores the zero point", "passes/_adaround_opt.py", "    w_soft = p.scale * (np.clip(q, p.qmin, p.qmax) - p.zero_point)", "    w_soft = p.scale * np.clip(q, p.qmin, p.qmax)", ADA),
    M("all layers in one round", "passes/_adaround_data.py", "            depth[node.name] = here\n            here += 1", "            depth[node.name] = 0\n            here += 1", ADA),
    M("conv transpose kernel not flipped", "passes/_adaround_ops.py", "    flipped = np.flip(w, axis=spatial)", "    flipped = w", ADA),
    M("shared weights rounded", "passes/adaround.py", "    if uses > 1:", "    if uses > 2:", ADA),
    # --- SmoothQuant
    M("smoothquant alpha inverted", "passes/smoothquant.py", "    s = np.power(np.maximum(xmax, 1e-8), alpha) / np.power(np.maximum(wmax, 1e-8), 1 - alpha)", "    s = np.power(np.maximum(xmax, 1e-8), 1 - alpha) / np.power(np.maximum(wmax, 1e-8), alpha)", SQ),
    M("smoothquant weights not scaled", "passes/smoothquant.py", "(w * s[:, None]).astype(np.float32)", "w.astype(np.float32)", SQ),
    M("post-LN norm folded", "passes/smoothquant.py", "fold=len(matmuls) == len(readers[x]) and own_params", "fold=own_params", SQ),
    M("smoothquant min gain 0 dB", "passes/smoothquant.py", "    min_gain_db: float = 1.0", "    min_gain_db: float = 0.0", SQ),
    M("smoothquant on a non-last-axis norm", "passes/smoothquant.py", "    if axis != -1:", "    if False:", SQ,
      equivalent="the norm's scale and bias have x.shape[axis:], whose last axis is the MatMuls' input channel: dividing them by s and scaling W's rows by s keeps (x / s)(s W) = x W for any normalization axis"),
    # --- dynamic quantization and embeddings
    M("dynamic weights per tensor", "passes/dynamic.py", "        amax = np.abs(w).max(axis=0) if per_channel else np.array(np.abs(w).max())", "        amax = np.array(np.abs(w).max())", DYN),
    M("dynamic rounding toward zero", "passes/dynamic.py", "        w_q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)", "        w_q = np.clip(np.trunc(w / scale), -127, 127).astype(np.int8)", DYN),
    M("dynamic scale over 255 levels", "passes/dynamic.py", "        scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)", "        scale = np.where(amax > 0, amax / 255.0, 1.0).astype(np.float32)", DYN),
    M("dynamic Gemm transB ignored", "passes/dynamic.py", '        w = w.T if attrs.get("transB", 0) else w', "        w = w", DYN),
    M("dynamic Gemm bias dropped", "passes/dynamic.py", '        has_bias = node.op_type == "Gemm" and len(node.input) > 2 and bool(node.input[2])', "        has_bias = False", DYN),
    M("dynamic exclusions ignored", "passes/dynamic.py", "        if not isinstance(weight, np.ndarray) or left_out(node):", "        if not isinstance(weight, np.ndarray):", DYN),
    M("embedding scale per table", "passes/_embeddings.py", "    amax = np.abs(table).max(axis=1, keepdims=True)", "    amax = np.abs(table).max(keepdims=True)", DYN),
    M("embedding exclusions ignored", "passes/_embeddings.py", "    return axis == 0 and not left_out(node) and all(", "    return axis == 0 and all(", DYN),
    # --- fp16
    M("fp16 values not clipped", "passes/fp16.py", "            new = numpy_helper.from_array(np.clip(arr, -_F16_MAX, _F16_MAX).astype(np.float16), name)", "            new = numpy_helper.from_array(arr.astype(np.float16), name)", FP16),
    M("fp16 Resize scales converted", "passes/fp16.py", '_FLOAT32_INPUTS = {("Resize", 2), ("Upsample", 1)}', '_FLOAT32_INPUTS = {("Upsample", 1)}', FP16),
    M("fp16 of a QDQ model", "passes/fp16.py", '    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node):', "    if False:", FP16),
    M("fp16 Cast targets kept float32", "passes/fp16.py", '            if node.op_type == "Cast" and attr.name == "to" and attr.i == _F32 and node.name not in kept:', "            if False:", FP16),
    # --- model files and validation
    M("wire integrity unchecked", "onnxq/model.py", "        if _unknown_field_count(msg):", "        if False:", MODEL),
    M("opset above the maximum accepted", "onnxq/model.py", "    if not MIN_OPSET <= opset <= MAX_OPSET:", "    if not MIN_OPSET <= opset:", MODEL),
    M("external references saved", "onnxq/model.py", "    refuse_external_references(model)\n", "\n", MODEL),
    M("external data never written", "onnxq/model.py", "    use_external = external_data if external_data is not None else model.ByteSize() >= size_threshold", "    use_external = bool(external_data)", MODEL),
    M("external offset digits unchecked", "onnxq/model_files.py", "        if key in info and not _DIGITS.fullmatch(info[key]):", "        if False:", MODEL),
    # --- measurement
    M("agreement on axis 1", "onnxq/measure/metrics.py", "out_c.argmax(axis=-1) == ref_c.argmax(axis=-1)", "out_c.argmax(axis=1) == ref_c.argmax(axis=1)", MEASURE),
    M("SQNR inverted", "onnxq/measure/metrics.py", "    return 10.0 * math.log10(signal / noise)", "    return 10.0 * math.log10(noise / signal)", MEASURE),
    M("SQNR in amplitude dB", "onnxq/measure/metrics.py", "    return 10.0 * math.log10(signal / noise)", "    return 20.0 * math.log10(signal / noise)", MEASURE),
    M("top-k ties counted against the label", "onnxq/measure/metrics.py", "(scores == label_scores) & (index < labels[:, None])", "(scores == label_scores) & (index <= labels[:, None])", MEASURE),
    M("top-k off by one", "onnxq/measure/metrics.py", "            self.correct[k] += int((rank < k).sum())", "            self.correct[k] += int((rank <= k).sum())", MEASURE),
    M("top-k beyond the classes is 1.0", "onnxq/measure/metrics.py", "        if self.count == 0 or self.num_classes is None or k > self.num_classes:", "        if self.count == 0 or self.num_classes is None:", MEASURE),
    M("cosine of two zero vectors 0", "onnxq/measure/metrics.py", "np.where((n1 == 0) & (n2 == 0), 1.0, 0.0)", "np.where((n1 == 0) & (n2 == 0), 0.0, 0.0)", MEASURE),
    M("cosine averaged per batch", "onnxq/measure/metrics.py", "        self.cos_count += samples", "        self.cos_count += 1", MEASURE),
    M("min_rtol of signed references", "onnxq/measure/metrics.py", "float((err[finite] / np.abs(r[finite])).max())", "float((err[finite] / r[finite]).max())", MEASURE),
    M("warm-up skipped", "onnxq/measure/timing.py", "        for _ in range(runs):\n            call()", "        for _ in range(0):\n            call()", MEASURE),
    M("warm-up for a time may run zero times", "onnxq/measure/timing.py", "    while done == 0 or time.perf_counter() < end:", "    while time.perf_counter() < end:", MEASURE),
    M("percentiles swapped", "onnxq/measure/timing.py", "    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])", "    p50, p90, p95, p99 = np.percentile(ms, [50, 95, 90, 99])", MEASURE),
    M("population std", "onnxq/measure/timing.py", '        "std": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,', '        "std": float(ms.std()) if ms.size > 1 else 0.0,', MEASURE),
    M("CV warning flipped", "onnxq/measure/timing.py", "    if cv > cv_threshold:", "    if cv < cv_threshold:", MEASURE),
    M("few-runs warning below 2 runs only", "onnxq/measure/timing.py", "    if runs < MIN_RUNS_FOR_TAILS:", "    if runs < 2:", MEASURE),
    M("odd Williams design unbalanced", "onnxq/measure/timing.py", "    return rows if n % 2 == 0 else rows + [row[::-1] for row in rows]", "    return rows", MEASURE),
    M("duration ignores the minimum rounds", "onnxq/measure/timing.py", "(r < MIN_DURATION_ROUNDS or clock() - begin < limit)", "(clock() - begin < limit)", MEASURE),
    M("speedup inverted", "onnxq/measure/timing.py", '        e["speedup_vs_first"] = base / e["latency_ms"]["p50"]', '        e["speedup_vs_first"] = e["latency_ms"]["p50"] / base', MEASURE),
    M("CV is the std", "onnxq/measure/bench.py", '    cv = lat["std"] / lat["mean"] if lat["mean"] > 0 else 0.0', '    cv = lat["std"]', MEASURE),
    M("throughput in samples per ms", "onnxq/measure/bench.py", '        "throughput_per_s": p.batch / (lat["mean"] / 1e3),', '        "throughput_per_s": p.batch / lat["mean"],', MEASURE),
    M("spinning off even with one thread", "onnxq/measure/bench.py", "    return n_models > 1 and config.threads != 1", "    return n_models > 1", MEASURE),
    M("negative warm-up accepted", "onnxq/measure/bench.py", "        if self.runs < 1 or self.warmup_runs < 0:", "        if self.runs < 1:", MEASURE),
    M("fixed-batch tail not evaluated", "onnxq/measure/evaluate.py", "    if fixed and start < len(dataset) and not isinstance(dataset, FeedsDataset):", "    if False:", MEASURE),
    M("label equal to the class count accepted", "onnxq/measure/evaluate.py", "    bad = (labels < 0) | (labels >= classes)", "    bad = (labels < 0) | (labels > classes)", MEASURE),
    M("reference inputs unchecked", "onnxq/measure/evaluate.py", "    if ins != ref_ins:", "    if False:", MEASURE),
    M("non-finite outputs accepted", "onnxq/measure/evaluate.py", "        if np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():", "        if False:", MEASURE),
    M("NaN written to JSON", "onnxq/report/document.py", "    return json.dumps(report, indent=2, allow_nan=False, default=_plain)", "    return json.dumps(report, indent=2, allow_nan=True, default=_plain)", REPORT),
    M("report schema id", "onnxq/report/document.py", 'SCHEMA_ID = "onnxq.report/1"', 'SCHEMA_ID = "onnxq.report/2"', REPORT),
    M("markdown cell keeps a bare pipe", "onnxq/report/markdown.py", '    return " ".join(str(text).split()).replace("|", "\\\\|")', '    return " ".join(str(text).split())', REPORT),
    # --- runtime: EP table, options, re-batching
    M("TensorRT listed alone", "onnxq/runtime/eps.py", "    names = (spec.ep, *EPS[spec.ep].then)", "    names = (spec.ep,)", RUNTIME),
    M("GPU EP without device_id", "onnxq/runtime/eps.py", '    opts = {"device_id": str(spec.device_id)} if ep.gpu else {}', "    opts = {}", RUNTIME),
    M("NHWC chosen for float32 convs", "onnxq/runtime/auto_options.py", '        changes["cuda_nhwc"] = convs > 0', '        changes["cuda_nhwc"] = True', RUNTIME),
    M("rebatch check on one sample only", "onnxq/rebatch.py", '            worst = max(worst, _difference(row, ref, f"output {name!r}, sample {i} of 2"))', "            pass", RUNTIME),
    # --- shared helpers of the passes, the inspector, bench's inputs, ORT's log
    M("Gemm layer axes swapped", "passes/_linear_layers.py", "node, \"gemm\", node.input[1], bias, 1 if trans_b else 0, 0 if trans_b else 1, 2,", "node, \"gemm\", node.input[1], bias, 0 if trans_b else 1, 1 if trans_b else 0, 2,", CLE),
    M("channel std without the mean", "passes/_tensor_stats.py", '        var = np.maximum(a["sq"] / a["n"] - np.square(mean), 0.0)', '        var = a["sq"] / a["n"]', CLE),
    M("depthwise read as any grouped conv", "onnxq/inspect/facts.py", "    if group <= 1:\n        return False", "    if group < 1:\n        return False", _t("guards", "measure_guards", "inspect", "cli_errors")),
    M("bench size leaves out external data", "onnxq/measure/bench_inputs.py", "    return path.stat().st_size + sum(f.stat().st_size for f in files if f.is_file())", "    return path.stat().st_size", MEASURE),
    M("ORT warnings dropped from the log", "onnxq/runtime/ort_log.py", '            elif m.group("sev") in "WEF":', '            elif m.group("sev") in "EF":', RUNTIME),
    # --- QOperator conversion, onnxq convert, lint (issue 14)
    M("qoperator: 16-bit activations converted", "passes/_qoperator_ops.py", "    if q.elem_type not in EIGHT_BIT:\n        return f\"{what} is {_type_name(q.elem_type)}: QOperator kernels take 8 bits\"\n    if not q.per_tensor:\n        return f\"{what} has per-channel scales", "    if False:\n        return f\"{what} is {_type_name(q.elem_type)}: QOperator kernels take 8 bits\"\n    if not q.per_tensor:\n        return f\"{what} has per-channel scales", QOP),
    M("qoperator: per-channel activations converted", "passes/_qoperator_ops.py", "    if not q.per_tensor:\n        return f\"{what} has per-channel scales: QOperator ops take one scale per activation\"", "    if False:\n        return f\"{what} has per-channel scales: QOperator ops take one scale per activation\"", QOP),
    M("qoperator: weight scales on another axis taken", "passes/_qoperator_ops.py", "    if q.axis is None or q.axis % rank != channel_axis % rank or q.scale_value.ndim != 1:", "    if q.axis is None or q.scale_value.ndim != 1:", QOP),
    M("qoperator: int8 input with uint8 weights", "passes/_qoperator_ops.py", "KERNEL_TYPES = ((_U8, _S8), (_U8, _U8), (_S8, _S8))", "KERNEL_TYPES = ((_U8, _S8), (_U8, _U8), (_S8, _S8), (_S8, _U8))", QOP),
    M("qoperator: output type not the input's", "passes/_qoperator_ops.py", "    if y is not None and y.elem_type != x.elem_type:", "    if False:", QOP),
    M("qoperator: bias scale unchecked", "passes/_qoperator_ops.py", "        if scale.size not in (1, expected.size) or not np.allclose(scale, expected, rtol=_BIAS_SCALE_RTOL, atol=0):", "        if scale.size not in (1, expected.size):", QOP),
    M("qoperator: bias zero point unchecked", "passes/_qoperator_ops.py", "        if b.elem_type != _INT32 or b.name not in consts or np.any(b.zp_value != 0):", "        if b.elem_type != _INT32 or b.name not in consts:", QOP),
    M("qoperator: float bias truncated", "passes/_qoperator_ops.py", "    q = np.clip(np.rint(consts[name].astype(np.float64) / expected), -(2**31), 2**31 - 1).astype(np.int32)", "    q = np.clip(consts[name].astype(np.float64) / expected, -(2**31), 2**31 - 1).astype(np.int32)", QOP),
    M("qoperator: move across two grids", "passes/_qoperator_ops.py", "    if not x.same_quantization(y):", "    if False:", QOP),
    M("qoperator: same grid ignores the zero point", "passes/_qoperator_match.py", "            and int(self.zp_value.reshape(-1)[0]) == int(other.zp_value.reshape(-1)[0])", "            and True", QOP),
    M("qoperator: interpolating Resize moved", "passes/_qoperator_ops.py", "    if group.node.op_type == \"Resize\" and attribute(group.node, \"mode\", b\"nearest\") not in (b\"nearest\", \"nearest\"):", "    if False:", QOP),
    M("qoperator: 16-bit MaxPool moved", "passes/_qoperator_ops.py", "    if group.node.op_type in EIGHT_BIT_MOVES and x.elem_type not in EIGHT_BIT:", "    if False:", QOP),
    M("qoperator: Clip bound truncated", "passes/_qoperator_ops.py", "        q = np.clip(np.rint(np.float32(bound) / np.float32(scale)) + zp, info.min, info.max)", "        q = np.clip(np.trunc(np.float32(bound) / np.float32(scale)) + zp, info.min, info.max)", QOP),
    M("qoperator: Clip bound without the zero point", "passes/_qoperator_ops.py", "        q = np.clip(np.rint(np.float32(bound) / np.float32(scale)) + zp, info.min, info.max)", "        q = np.clip(np.rint(np.float32(bound) / np.float32(scale)), info.min, info.max)", QOP),
    M("qoperator: Relu lower bound dropped", "passes/_qoperator_ops.py", "    bounds = [0.0, None] if group.node.op_type == \"Relu\" else [None, None]", "    bounds = [None, None]", QOP),
    M("qoperator: graph-output Q replaced", "passes/_qoperator_match.py", "        if len([o for o in node.output if o]) != 1 or node.output[0] in self.outputs:", "        if len([o for o in node.output if o]) != 1:", QOP),
    M("qoperator: blocked DQ taken", "passes/_qoperator_match.py", "        if attrs.get(\"block_size\", 0) or len(node.input) < 2 or node.input[1] not in self.consts:", "        if len(node.input) < 2 or node.input[1] not in self.consts:", QOP),
    M("qoperator: absent zero point as int8", "passes/_qoperator_match.py", "_DEFAULT_ZP_TYPE = onnx.TensorProto.UINT8", "_DEFAULT_ZP_TYPE = onnx.TensorProto.INT8", QOP),
    M("qoperator: Gemm alpha ignored", "passes/_qoperator_ops.py", "    if attribute(group.node, \"alpha\", 1.0) != 1.0 or attribute(group.node, \"beta\", 1.0) != 1.0:", "    if attribute(group.node, \"beta\", 1.0) != 1.0:", QOP),
    M("qoperator: float-read outputs converted", "passes/qoperator.py", "    elif group.output is None and node.op_type not in (\"MatMul\", \"Gemm\"):", "    elif group.output is None and node.op_type not in (\"MatMul\", \"Gemm\", \"Conv\"):", QOP),
    M("qoperator: read DQ nodes dropped", "passes/qoperator.py", "    keep = [n for n in graph.node if not (n.op_type == \"DequantizeLinear\" and n.output[0] not in used", "    keep = [n for n in graph.node if not (n.op_type == \"DequantizeLinear\" and True", QOP),
    M("qoperator: verify threshold off", "passes/qoperator.py", "        if worst is not None and worst < 40.0:", "        if worst is not None and worst < -1e9:", QOP),
    M("convert: NaN of the converted model accepted", "onnxq/quantize/convert.py", "        if converted_bad:", "        if False:", QOP),
    M("convert: sqnr tolerance ignored", "onnxq/quantize/convert.py", "        if s[\"sqnr_db\"] is not None and s[\"sqnr_db\"] < min_sqnr:", "        if False:", QOP),
    M("convert: float model accepted", "onnxq/quantize/convert.py", "    _refuse_float_model(model, model_path)", "    pass", QOP),
    M("convert: NaN pairs counted as differing", "passes/qoperator.py", "            s[\"different\"] += int(np.count_nonzero((x != y) & ~(np.isnan(x) & np.isnan(y))))", "            s[\"different\"] += int(np.count_nonzero(x != y))", QOP),
    M("format accepted for any target", "onnxq/quantize/targets.py", "    if fmt not in target.formats:", "    if False:", RECIPE + QOP),
    M("tensorrt target with int32 biases", "onnxq/quantize/targets.py", "            int32_bias=False,\n        ),\n        Target(\n            name=\"cuda\"", "            int32_bias=True,\n        ),\n        Target(\n            name=\"cuda\"", RECIPE + _t("lint", "cuda_target")),
    M("lint: warnings fail the lint", "onnxq/lint/check.py", "        return self.errors == 0", "        return self.errors + self.warnings == 0", _t("lint", "cli_errors")),
    M("lint: trt int32 bias only a warning", "onnxq/lint/tensorrt_rules.py", "    Rule(\"trt-int32-bias\", ERROR,", "    Rule(\"trt-int32-bias\", WARNING,", _t("lint")),
    # --- graph preparation: per-channel Mul/Add after Conv (issue 13)
    M("mul fold along the last axis", "passes/_fold_bias_add.py", "        tensor = numpy_helper.from_array((old * vec.reshape((-1,) + (1,) * (old.ndim - 1))).astype(np.float32), name)", "        tensor = numpy_helper.from_array((old * vec.reshape((1,) * (old.ndim - 1) + (-1,))).astype(np.float32), name)", PREP + _t("fold_affine")),
    M("mul fold leaves the bias", "passes/_fold_bias_add.py", "    for index, suffix in ((1, \"weight_scaled\"), (2, \"bias_scaled\")):", "    for index, suffix in ((1, \"weight_scaled\"),):", PREP + _t("fold_affine")),
    M("fold with a second reader", "passes/_fold_bias_add.py", "    if conv is None or conv.op_type != \"Conv\" or c not in inits or uses[x] != 1 or x in outputs:", "    if conv is None or conv.op_type != \"Conv\" or c not in inits or x in outputs:", PREP + _t("fold_affine")),
    M("fold of a graph output", "passes/_fold_bias_add.py", "    if conv is None or conv.op_type != \"Conv\" or c not in inits or uses[x] != 1 or x in outputs:", "    if conv is None or conv.op_type != \"Conv\" or c not in inits or uses[x] != 1:", PREP + _t("fold_affine"), equivalent="use_counts counts graph outputs, so uses[x] != 1 refuses that Conv already (tests/test_fold_affine.py pins it)"),
    M("BN std follows c, not abs(c)", "passes/prepare.py", "std=(entry.std * np.abs(c)).astype(np.float32))", "std=(entry.std * c).astype(np.float32))", PREP + _t("fold_affine", "cle", "bias_correction")),
    M("BN mean ignores the shift", "passes/prepare.py", "mean=(entry.mean * c + d).astype(np.float32),", "mean=(entry.mean * c).astype(np.float32),", PREP + _t("fold_affine", "cle", "bias_correction")),
    M("affine fold one round only", "passes/prepare.py", "    for _ in range(8):  # each round folds one Mul and one Add per Conv; chains are short", "    for _ in range(1):  # each round folds one Mul and one Add per Conv; chains are short", PREP + _t("fold_affine")),
    # --- the range cache (--save-ranges / --load-ranges)
    M("ranges of another model accepted", "onnxq/quantize/range_cache.py", "    if doc.get(\"model_sha256\") != key[\"model_sha256\"]:", "    if False:", _t("range_cache", "quantize")),
    M("ranges after other float passes accepted", "onnxq/quantize/range_cache.py", "    if doc.get(\"float_passes\") != key[\"float_passes\"]:", "    if False:", _t("range_cache", "quantize")),
    M("inverted range accepted", "onnxq/quantize/range_cache.py", "    if not lo <= hi:", "    if False:", _t("range_cache", "quantize")),
    # --- onnxq sweep (issue 17)
    M("sweep: recipe not in the quantize key", "onnxq/sweep/plan.py", "                        \"recipe\": recipe.canonical})  # fmt: skip", "                        })  # fmt: skip", _t("sweep", "sweep_spec", "sweep_report")),
    M("sweep: calib not in the quantize key", "onnxq/sweep/plan.py", "        key = task_key({\"stage\": \"quantize\", \"model\": self.hashes.model(m.path), \"calib\": self.hashes.data(calib),", "        key = task_key({\"stage\": \"quantize\", \"model\": self.hashes.model(m.path),", _t("sweep", "sweep_spec", "sweep_report")),
    M("sweep: cached model bytes unchecked", "onnxq/sweep/cache.py", "            if not model.is_file() or model_sha256(model) != record[\"result\"].get(\"model_sha256\"):", "            if not model.is_file():", _t("sweep", "sweep_report")),
    M("sweep: no retry of a lost worker", "onnxq/sweep/scheduler.py", "        if s.attempts <= self.retries:", "        if False:", _t("sweep", "sweep_report")),
    M("sweep: failed tasks cached", "onnxq/sweep/scheduler.py", "        if c.reply.get(\"ok\"):\n            self.store.store(", "        if True:\n            self.store.store(", _t("sweep", "sweep_report")),
    M("sweep: benchmarks share a node", "onnxq/sweep/scheduler.py", "            if self._used(node) == 0 and exclusive and not shared:", "            if exclusive and not shared:", _t("sweep", "sweep_report")),
    M("sweep: onnxruntime version not in keys", "onnxq/sweep/cache.py", "    return {\"onnxq\": __version__, \"onnx\": onnx.__version__, \"onnxruntime\": onnxruntime.__version__}", "    return {\"onnxq\": __version__, \"onnx\": onnx.__version__}", _t("sweep", "sweep_report")),
    # --- padded positions out of the activation statistics (issue 12)
    M("padding: kept in the statistics", "onnxq/quantize/calibrate.py", "            keep = padding.keep(feeds)", "            keep = None", PAD),
    M("padding: key columns kept", "onnxq/quantize/padding.py", "        axes = tuple(dict.fromkeys(found[:1] + found[-1:]))", "        axes = tuple(found[:1])", PAD),
    M("padding: symbolic axes ignored", "onnxq/quantize/padding.py", "    if not seq:  # a fixed length: the sizes decide everywhere", "    if True:  # a fixed length: the sizes decide everywhere", PAD),
    M("padding: only the first sequence axis masked", "onnxq/quantize/padding.py", "    for a in axes:\n        shape = [1] * value.ndim", "    for a in axes[:1]:\n        shape = [1] * value.ndim", PAD),
    M("padding: any mask values taken", "onnxq/quantize/padding.py", " or m.dtype.kind not in \"biuf\" or not np.isin(m, (0, 1)).all():", " or m.dtype.kind not in \"biuf\":", PAD),
    M("padding: unk__ dims taken as symbols", "onnxq/quantize/padding.py", "    return dim.HasField(\"dim_value\") or bool(dim.dim_param and not dim.dim_param.startswith(\"unk__\"))", "    return dim.HasField(\"dim_value\") or bool(dim.dim_param)", PAD),
    M("padding: positions of another size masked", "onnxq/quantize/padding.py", "    axes = tuple(a for a in axes if value.shape[a] == t)", "    axes = tuple(axes)", PAD),
    # --- mixed precision (issues 12, 13)
    M("mixed: least helpful group first", "passes/mixed_precision.py", "    for s_alone, g in sorted(alone, key=lambda x: -x[0]):", "    for s_alone, g in sorted(alone, key=lambda x: x[0]):", MIX),
    M("mixed: search past a met target", "passes/mixed_precision.py", "    if base >= cfg.target_sqnr_db:", "    if False:", MIX),
    M("mixed: stops short of the target", "passes/mixed_precision.py", "        if best >= cfg.target_sqnr_db or score.evaluations >= cfg.max_evaluations:", "        if best >= cfg.target_sqnr_db - 10 or score.evaluations >= cfg.max_evaluations:", MIX),
    M("mixed: wide groups ignored", "passes/qdq.py", "    wide_groups = {plan.groups[t] for t in cfg.wide_tensors if t in plan.groups}\n    by_group", "    wide_groups = set()\n    by_group", MIX),
    M("mixed: int8 weight behind a 16-bit input", "passes/qdq.py", "            if node.op_type in _WIDE_FLOAT_WEIGHTS and any(i in wide for i in node.input):", "            if False:", MIX),
    M("mixed: noise kept as a gain", "passes/mixed_precision.py", "        if s > best + cfg.min_gain_db:  # kept;", "        if s > best:  # kept;", MIX),
    M("mixed: --target-data ignored", "passes/mixed_precision.py", "    if cfg.data is None:\n        feeds = calibration_feeds", "    if True:\n        feeds = calibration_feeds", MIX),
    M("mixed: a worse step kept", "passes/mixed_precision.py", "        if s > best + cfg.min_gain_db:  # kept;", "        if True:  # kept;", MIX),
    # --- presets (issue 12)
    M("preset: constant-weight MatMul taken for attention", "onnxq/quantize/presets.py", "            if any(n is not None and n.op_type == \"MatMul\" and not set(n.input) & consts for n in frontier):", "            if any(n is not None and n.op_type == \"MatMul\" for n in frontier):", _t("presets")),
    M("preset: auto for dynamic too", "onnxq/quantize/presets.py", "    if name == \"none\" or (name == \"auto\" and (recipe.dynamic or not has_data)):", "    if name == \"none\" or (name == \"auto\" and not has_data):", _t("presets", "dynamic")),
    M("preset: auto never taken", "onnxq/quantize/presets.py", "        if not blocks:\n            return recipe, \"\"", "        if True:\n            return recipe, \"\"", _t("presets")),
    # --- onnxq analyze: written before looking at its tests (a fresh set, bench/results/mutation.md says how it fared)
    M("analyze: identical models score 0 dB", "onnxq/quantize/analyze.py", "    return None if noise == 0 else float(", "    return 0.0 if noise == 0 else float(", ANA),
    M("analyze: best output instead of the worst", "onnxq/quantize/analyze.py", "    return min(known) if known else None", "    return max(known) if known else None", ANA),
    M("analyze: nothing left float", "onnxq/quantize/analyze.py", "        left_float = _variant(ctx, exclude_nodes=(*ctx.qdq.exclude_nodes, name))", "        left_float = _variant(ctx, exclude_nodes=ctx.qdq.exclude_nodes)", ANA),
    M("analyze: activations alone keeps the weight", "onnxq/quantize/analyze.py", "score(_float_weights(qmodel, weights))", "score(qmodel)", ANA),
    M("analyze: weight zero point ignored", "onnxq/quantize/analyze.py", "        w = (q - zp.reshape(shape)) * scale.reshape(shape)", "        w = q * scale.reshape(shape)", ANA),
    M("analyze: NCHW channels read on the last axis", "onnxq/quantize/analyze.py", "        axis = 1 if x.ndim == 4 else x.ndim - 1", "        axis = x.ndim - 1", ANA),
    M("analyze: method error without saturation", "onnxq/quantize/analyze.py", "            fq = (np.clip(np.rint(x / s) + z, aq.qmin, aq.qmax) - z) * s", "            fq = (np.rint(x / s) + z - z) * s", ANA),
    M("analyze: advice on any gain", "onnxq/quantize/analyze.py", "        if gain < 1.0:", "        if gain < -100.0:", ANA),
    M("analyze: method advice on any difference", "onnxq/quantize/analyze.py", "            if methods[best] - methods[chosen] >= 3.0:", "            if methods[best] - methods[chosen] >= 0.0:", ANA),
    M("dynamic: embeddings not fused", "passes/dynamic.py", "left_out, fused=True)", "left_out, fused=False)", DYN),
    M("embeddings: block scales over the whole row", "passes/_embeddings.py", "    amax = np.abs(table.reshape(v, d // block, block)).max(axis=2)", "    amax = np.repeat(np.abs(table).max(axis=1, keepdims=True), d // block, axis=1)", DYN),
    M("bias floor: weight scales never raised", "passes/qdq.py", "            floor = None if overrides and node.input[idx] in overrides else self._bias_floor(node, idx)", "            floor = None", CORE + _t("bias_saturation")),
    M("bias floor: the whole int32 range", "passes/qdq.py", "        return b / (s_x * (np.iinfo(np.int32).max / 2)) if s_x > 0 else None", "        return b / (s_x * np.iinfo(np.int32).max) if s_x > 0 else None", CORE + _t("bias_saturation")),
    # --- the CLI's error format
    M("hint line dropped", "onnxq/cli/__init__.py", '        if exc.hint:\n            click.echo(f"hint: {exc.hint}", err=True)', '        if False:\n            click.echo(f"hint: {exc.hint}", err=True)', CLI),
    M("user errors exit 1", "onnxq/errors.py", "    exit_code = 2", "    exit_code = 1", CLI),
    M("error prefix capitalised", "onnxq/cli/__init__.py", '        click.echo(f"error: {exc.message}", err=True)', '        click.echo(f"Error: {exc.message}", err=True)', CLI),
    M("usage error without hint", "onnxq/cli/__init__.py", "        click.echo(f\"hint: {hint}\", err=True)", "        pass", CLI),
    M("traceback without --debug", "onnxq/cli/__init__.py", "    except OnnxqError as exc:\n        if debug:\n            raise", "    except OnnxqError as exc:\n        if True:\n            raise", CLI),
    M("report path checked after the run", "onnxq/cli/run.py", '        check_report_path(report_path, inputs=[("the input model", model), ("the output model", output), *inputs])', "        pass", CLI),
]  # fmt: skip

# The README's safety promises, each with the mutants above that break it (bench/results/mutation.md lists them with
# the test that killed each).
PROMISES = {
    "no pickle: data files are read without unpickling": ("object arrays accepted", "labels.npy unpickled"),
    "no read outside the model folder (../, absolute paths, symlinks)": (
        "external data outside the folder", "absolute external path unchecked", "external data symlinks not followed",
        "external tensor in a data .pb read", "external span past the file"),
    "data files: regular files only, caps checked before reading": (
        "non-regular data files opened", "data cap not charged", "sample cap unchecked",
        "cap not read from the environment", "encrypted members not refused"),
    "atomic writes (an interrupted write leaves the old file, no partial or temporary file)": (
        "model written in place", "temp file left on failure", "failed data rename not rolled back",
        "report file opened before rendering"),
    "output != input, under any spelling or link, checked before any work": (
        "output may equal input", "same file by spelling only", "output may be a data input",
        "output may be the input's external data", "quantize checks only the model path",
        "report may overwrite an input", "report path checked after the run"),
    "no silent EP fallback": (
        "partial fallback allowed", "dropped EP allowed", "EP gets no node unnoticed", "float nodes counted as shape nodes",
        "overridable initializers counted constant", "EP availability unchecked"),
}  # fmt: skip
