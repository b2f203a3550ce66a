"""FastLSTM as a module: a drop-in nn.LSTM (isinstance, parameters, initialisation, state_dict, repr),
from_lstm and convert, the fallback for devices without kernels, and an import that compiles nothing."""
import copy
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import nn

import fastlstm
from conftest import DEVICES, TOL, lstm_pair, output_tensors
from fastlstm import FastLSTM, convert

# Where the fastlstm under test lives (the source tree with an in-place build, or site-packages).
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastlstm.__file__)))

CONFIGS = [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=3, proj_size=2, batch_first=True),
    dict(bias=False, bidirectional=True, proj_size=3, dropout=0.25, num_layers=2),
]
CONFIG_IDS = ["default", "bi-2", "proj-3-bf", "nobias-bi-proj-dropout"]


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_is_an_nn_lstm():
    m = FastLSTM(3, 5)
    assert isinstance(m, nn.LSTM) and isinstance(m, nn.RNNBase) and isinstance(m, nn.Module)


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_same_parameters_and_initialisation(cfg):
    ref, fast = lstm_pair(4, 6, **cfg)
    assert [(n, p.shape) for n, p in fast.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    assert fast._flat_weights_names == ref._flat_weights_names
    # Built from the same seed: bit-identical weights, i.e. the same initialisation.
    assert same_tensors(dict(fast.named_parameters()), dict(ref.named_parameters()))
    for name in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
                 "proj_size"):
        assert getattr(fast, name) == getattr(ref, name), name


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_state_dict_round_trip_both_ways(cfg):
    ref = nn.LSTM(4, 6, **cfg)
    fast = FastLSTM(4, 6, **cfg)
    back = nn.LSTM(4, 6, **cfg)
    assert not same_tensors(fast.state_dict(), ref.state_dict())  # different seeds: the load does the work
    fast.load_state_dict(ref.state_dict(), strict=True)
    assert same_tensors(fast.state_dict(), ref.state_dict())
    back.load_state_dict(fast.state_dict(), strict=True)
    assert same_tensors(back.state_dict(), ref.state_dict())
    # ...and the loaded weights are the ones used: the same results as the nn.LSTM they came from.
    ref.eval(), fast.eval()
    x = torch.randn((2, 3, 4) if cfg.get("batch_first") else (3, 2, 4))
    with torch.no_grad():
        for a, b in zip(output_tensors(fast(x)), output_tensors(ref(x))):
            torch.testing.assert_close(a, b, **TOL[torch.float32])


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_repr_reads_like_nn_lstm(cfg):
    ref, fast = lstm_pair(4, 6, **cfg)
    assert repr(ref).startswith("LSTM(")
    assert repr(fast) == "Fast" + repr(ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False])
def test_from_lstm_keeps_weights_mode_device_dtype(training, device):
    ref = nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3, batch_first=True, dropout=0.5,
                  device=device, dtype=torch.float64)
    ref.train(training)
    fast = FastLSTM.from_lstm(ref)
    assert type(fast) is FastLSTM and fast.training is training
    assert repr(fast) == "Fast" + repr(ref)
    for (n, p), (m, q) in zip(fast.named_parameters(), ref.named_parameters()):
        assert n == m and p.dtype == q.dtype == torch.float64 and p.device == q.device
        assert torch.equal(p, q)
        assert p.data_ptr() != q.data_ptr(), "from_lstm copies the weights; it does not share them"
    if not training:
        x = torch.randn(2, 5, 4, device=device, dtype=torch.float64)
        with torch.no_grad():
            for a, b in zip(output_tensors(fast(x)), output_tensors(ref(x))):
                torch.testing.assert_close(a, b, **TOL[torch.float64])


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.rnn = nn.LSTM(4, 6, batch_first=True, bidirectional=True)

    def forward(self, tokens):
        return self.rnn(self.embed(tokens))[0]


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.stack = nn.ModuleList([nn.LSTM(12, 5, batch_first=True), nn.Sequential(nn.LSTM(5, 3, batch_first=True,
                                                                                          proj_size=2))])
        self.head = nn.Linear(2, 1)

    def forward(self, tokens):
        x = self.encoder(tokens)
        x = self.stack[0](x)[0]
        x = self.stack[1][0](x)[0]
        return self.head(x)


def test_convert_replaces_every_nn_lstm_in_place():
    torch.manual_seed(0)
    model = Model().double().eval()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    tokens = torch.randint(0, 10, (3, 7))
    with torch.no_grad():
        expected = model(tokens)
    originals = [m for m in model.modules() if type(m) is nn.LSTM]
    assert len(originals) == 3

    result = convert(model)
    assert result is model, "convert works in place and returns the model"
    lstms = [m for m in model.modules() if isinstance(m, nn.LSTM)]
    assert len(lstms) == 3 and all(type(m) is FastLSTM for m in lstms)
    assert all(not m.training and m.weight_ih_l0.dtype == torch.float64 for m in lstms)
    assert same_tensors(model.state_dict(), before), "weights (and their names) kept"
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), expected, **TOL[torch.float64])
    # Converting again changes nothing: FastLSTMs stay the same objects.
    again = [id(m) for m in model.modules()]
    assert convert(model) is model and [id(m) for m in model.modules()] == again


def test_convert_of_a_bare_lstm_returns_a_fastlstm():
    ref = nn.LSTM(3, 4, proj_size=2)
    fast = convert(ref)
    assert type(fast) is FastLSTM and same_tensors(fast.state_dict(), ref.state_dict())


@pytest.mark.parametrize("device", DEVICES)
def test_module_dtype_conversions_copy_and_deepcopy(device):
    ref, fast = lstm_pair(3, 4, num_layers=2, device=device)
    ref, fast = ref.double(), fast.double()
    x = torch.randn(5, 2, 3, device=device, dtype=torch.float64)
    expected = output_tensors(ref(x))
    for m in (fast, copy.deepcopy(fast)):
        assert type(m) is FastLSTM
        for a, b in zip(output_tensors(m(x)), expected):
            torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_has_kernels():
    assert fastlstm.has_kernels("cpu")
    assert not fastlstm.has_kernels("meta") and not fastlstm.has_kernels("xla")
    assert fastlstm.has_kernels("cuda") == torch._C._dispatch_has_kernel_for_dispatch_key(
        "fastlstm::lstm_forward", "CUDA")


def test_device_without_kernels_falls_back_to_nn_lstm_with_one_warning():
    # 'meta' stands in for a device fastlstm has no kernels for: FastLSTM runs nn.LSTM's implementation and
    # says so once per device.
    from fastlstm import modules
    modules._warned.discard(("device", "meta"))
    ref, fast = lstm_pair(3, 5, num_layers=2, proj_size=2, device="meta")
    x = torch.randn(4, 2, 3, device="meta")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [fast(x) for _ in range(3)]
    msgs = [str(w.message) for w in caught if "no kernels" in str(w.message)]
    assert len(msgs) == 1 and "'meta'" in msgs[0]
    expected = output_tensors(ref(x))
    for res in results:
        for a, b in zip(output_tensors(res), expected):
            assert a.device.type == "meta" and a.shape == b.shape and a.dtype == b.dtype


def test_unsupported_dtype_falls_back_to_nn_lstm():
    # nn.LSTM runs complex LSTMs on the CPU; fastlstm has no complex kernels, so FastLSTM hands them over.
    ref, fast = lstm_pair(3, 4, dtype=torch.complex64)
    x = torch.randn(5, 2, 3, dtype=torch.complex64)
    with torch.no_grad():
        for a, b in zip(output_tensors(fast(x)), output_tensors(ref(x))):
            assert torch.equal(a, b)


def test_import_compiles_nothing(tmp_path):
    # In a fresh interpreter: any JIT build through torch.utils.cpp_extension fails loudly, the extension
    # build directory stays empty, and importing and using FastLSTM is quick and does not even import
    # Dynamo (fastlstm only hooks its import; see modules._install_dynamo_hook).
    code = textwrap.dedent("""
        import os, sys, time
        import torch
        import torch.utils.cpp_extension as ext

        def refuse(*args, **kwargs):
            raise AssertionError("import fastlstm tried to compile an extension")
        ext.load = ext.load_inline = ext._jit_compile = refuse
        t = time.perf_counter()
        import fastlstm
        m = fastlstm.FastLSTM(3, 4)
        m(torch.randn(2, 1, 3))
        assert "torch._dynamo" not in sys.modules, "using FastLSTM imported Dynamo"
        print(f"{time.perf_counter() - t:.3f}")
    """)
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path / "ext"),
               PYTHONPATH=PKG_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "ext").exists() or not any((tmp_path / "ext").iterdir())
    # Generous, for a loaded machine: a build would take tens of seconds.
    assert float(proc.stdout.strip().splitlines()[-1]) < 5.0


def test_lengths_rebuilt_from_scalars_equal_the_lengths():
    # Under CUDA graph capture the packed lengths are written on the device by one fill per run of equal
    # values (fastlstm.rnn._filled); the same code on the CPU must give the lengths back exactly.
    from fastlstm.rnn import _filled, _lengths_to
    g = torch.Generator().manual_seed(0)
    for B in (1, 2, 5, 17):
        for _ in range(5):
            lengths = torch.randint(1, 6, (B,), generator=g).sort(descending=True).values
            assert torch.equal(_filled(lengths, torch.device("cpu")), lengths)
    lengths = torch.tensor([4, 4, 1])
    assert _lengths_to(lengths, torch.device("cpu")) is lengths  # the CPU path copies nothing


def test_no_import_cycle_inside_the_package():
    # fastlstm.gru once imported fastlstm.modules, which imported fastlstm.gru back (inside a function, to
    # dodge the cycle). Every import between the package's modules, at any depth of the file, must form no
    # cycle; only imports for type checkers (under `if TYPE_CHECKING:`) never run and do not count.
    import ast
    import pathlib
    root = pathlib.Path(fastlstm.__file__).parent
    graph = {}
    for path in root.rglob("*.py"):
        mod = ".".join(("fastlstm",) + path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps = set()
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(node.test) for b in node.body for n in ast.walk(b)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            elif isinstance(node, ast.ImportFrom) and node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
                deps.add(target)
                deps.update(f"{target}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("fastlstm."))
        graph[mod] = deps
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    # A package's __init__ importing its own submodules is not a cycle the other way round; drop the edges
    # from a submodule to the packages above it (Python has run their __init__ by then).
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", "import cycle: " + " -> ".join(path + [m])
        state[m] = "open"
        for d in sorted(graph[m]):
            visit(d, path + [m])
        state[m] = "done"
    for m in sorted(graph):
        visit(m, [])
