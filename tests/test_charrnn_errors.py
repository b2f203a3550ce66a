"""fastlstm-charrnn on bad input (issue 11, items 9 and 10): every bad file, text or option ends in one line
on stderr and exit status 2, never a traceback; damaged checkpoints are refused, not half-read; temporary
files of killed writers are cleaned up.

Each command-line case runs in a child process, because what is tested is what a user or a script sees:
the exit status and the stderr of the program. The child is forked from this process (torch already
imported), and runs the command as `python -m fastlstm.charrnn` does (its top level: sys.exit(main()), an
uncaught exception printed as a traceback, status 1), so a case costs milliseconds rather than an
interpreter start (1.5 s each, 50 cases). A few cases also run through a real `python -m fastlstm.charrnn`
and must give the same status and stderr, which ties the forked runs to the real program. The texts and
models are tiny (written to tmp_path; anna.txt is not needed).
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

import pytest
import torch

from fastlstm.charrnn import load_checkpoint, train
from fastlstm.charrnn.__main__ import main
from fastlstm.charrnn.errors import CharRNNError
from fastlstm.charrnn.train import _atomic_write, remove_stale_temporaries

REPO = Path(__file__).resolve().parents[1]
TEXT = "It was the best of times, it was the worst of times, it was the age of wisdom.\n" * 30  # 2400 chars


def _tiny_train(text, out, *extra):
    return ["train", "--text", str(text), "--out", str(out), "--hidden", "8", "--layers", "1", "--dropout", "0",
            "--batch-size", "2", "--seq-length", "10", "--val-frac", "0", "--max-steps", "2", "--threads", "1",
            *extra]


def _flip_inside_record(src: Path, dst: Path) -> str:
    """dst = src with one bit flipped in the middle of its largest tensor record (a weight); the record's
    name. Flipped there, torch.load reads the file without complaint and returns a wrong number."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    # The record's data starts after its local header: 30 bytes, the name, the extra field.
    name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x04
    dst.write_bytes(bytes(data))
    return info.filename


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny trained checkpoint and every kind of bad file the cases below need."""
    d = tmp_path_factory.mktemp("charrnn_bad")
    (d / "text.txt").write_text(TEXT, encoding="utf-8")
    threads = torch.get_num_threads()
    try:
        assert main(_tiny_train(d / "text.txt", d / "run")) == 0
    finally:
        torch.set_num_threads(threads)
    good = d / "run" / "checkpoint.pt"
    blob = good.read_bytes()
    (d / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    (d / "zero.pt").write_bytes(b"")
    (d / "random.pt").write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                                dtype=torch.uint8).numpy().tobytes())
    _flip_inside_record(good, d / "flipped.pt")
    torch.save({"weights": torch.zeros(3)}, d / "foreign.pt")
    (d / "nockpt").mkdir()
    for name, src in [("resume_truncated", "truncated.pt"), ("resume_zero", "zero.pt"),
                      ("resume_flipped", "flipped.pt")]:
        (d / name).mkdir()
        shutil.copy(d / src, d / name / "checkpoint.pt")
    (d / "empty.txt").write_bytes(b"")
    (d / "three.txt").write_text("abc", encoding="utf-8")
    (d / "latin1.txt").write_bytes("Anna Karénine\n".encode("latin-1") * 200)
    (d / "short_val.txt").write_text(TEXT[:250], encoding="utf-8")
    (d / "a_file").write_text("not a directory")
    return d


# (id, argv with {d} for the fixture's folder, what the one line must say). Each is a bad input that once
# ended in a traceback (or, for a flipped bit, in silently wrong weights). Sample cases pass a prime that
# is in the text ("It"), so that the bad input under test is the only one.
CASES = [
    # sample: the checkpoint
    ("sample missing checkpoint", "sample --checkpoint {d}/nope.pt --prime It", "no such file"),
    ("sample folder without checkpoint", "sample --checkpoint {d}/nockpt --prime It", "holds no checkpoint.pt"),
    ("sample truncated checkpoint", "sample --checkpoint {d}/truncated.pt --prime It", "damaged"),
    ("sample zero-byte checkpoint", "sample --checkpoint {d}/zero.pt --prime It", "empty (0 bytes)"),
    ("sample random bytes", "sample --checkpoint {d}/random.pt --prime It", "not a checkpoint"),
    ("sample one flipped bit", "sample --checkpoint {d}/flipped.pt --prime It", "CRC-32"),
    ("sample foreign torch file", "sample --checkpoint {d}/foreign.pt --prime It",
     "not a fastlstm-charrnn checkpoint"),
    # sample: the options
    ("sample temperature nan", "sample --checkpoint {d}/run --temperature nan --prime It", "--temperature"),
    ("sample temperature inf", "sample --checkpoint {d}/run --temperature inf --prime It", "finite"),
    ("sample temperature negative", "sample --checkpoint {d}/run --temperature -1 --prime It", ">= 0"),
    ("sample length negative", "sample --checkpoint {d}/run --length -5 --prime It", "--length"),
    ("sample length not a number", "sample --checkpoint {d}/run --length ten --prime It", "invalid int value"),
    ("sample top-k negative", "sample --checkpoint {d}/run --top-k -1 --prime It", "--top-k"),
    ("sample seed out of range", "sample --checkpoint {d}/run --seed 99999999999999999999999 --prime It",
     "--seed"),
    ("sample prime not in vocabulary", "sample --checkpoint {d}/run --prime Zq", "'Z' is not in the vocabulary"),
    ("sample empty prime", "sample --checkpoint {d}/run --prime=", "prime"),
    ("sample no checkpoint flag", "sample", "required"),
    # train: the text
    ("train missing text", "train --text {d}/nope.txt --out {d}/o", "No such file"),
    ("train text is a folder", "train --text {d}/nockpt --out {d}/o", "--text"),
    ("train empty text", "train --text {d}/empty.txt --out {d}/o", "is empty"),
    # The old message counted the training part only ("2 characters") for a file of 3.
    ("train 3-character text", "train --text {d}/three.txt --out {d}/o", "2 of its 3 characters"),
    ("train non-UTF-8 text", "train --text {d}/latin1.txt --out {d}/o", "not UTF-8 text (byte 0xe9 at offset 8"),
    ("train validation too short",
     "train --text {d}/short_val.txt --out {d}/o --batch-size 2 --seq-length 10 --val-frac 0.05",
     "validation text"),
    # train: the options
    ("train batch-size 0", "train --text {d}/text.txt --out {d}/o --batch-size 0", "--batch-size"),
    ("train hidden 0", "train --text {d}/text.txt --out {d}/o --hidden 0", "--hidden"),
    ("train layers 0", "train --text {d}/text.txt --out {d}/o --layers 0", "--layers"),
    ("train seq-length -1", "train --text {d}/text.txt --out {d}/o --seq-length -1", "--seq-length"),
    ("train epochs 0", "train --text {d}/text.txt --out {d}/o --epochs 0", "--epochs"),
    ("train max-steps 0", "train --text {d}/text.txt --out {d}/o --max-steps 0", "--max-steps"),
    ("train threads 0", "train --text {d}/text.txt --out {d}/o --threads 0", "--threads"),
    ("train val-every negative", "train --text {d}/text.txt --out {d}/o --val-every -1", "--val-every"),
    ("train ckpt-every negative", "train --text {d}/text.txt --out {d}/o --ckpt-every -2", "--ckpt-every"),
    ("train lr nan", "train --text {d}/text.txt --out {d}/o --lr nan", "--lr"),
    ("train lr 0", "train --text {d}/text.txt --out {d}/o --lr 0", "> 0"),
    ("train clip negative", "train --text {d}/text.txt --out {d}/o --clip -5", "--clip"),
    ("train dropout 1.5", "train --text {d}/text.txt --out {d}/o --dropout 1.5", "--dropout"),
    ("train val-frac 1", "train --text {d}/text.txt --out {d}/o --val-frac 1", "[0, 1)"),
    ("train val-frac negative", "train --text {d}/text.txt --out {d}/o --val-frac -0.1", "--val-frac"),
    ("train val-frac nan", "train --text {d}/text.txt --out {d}/o --val-frac nan", "finite"),
    # 4 x 10^7 x 10^7 float32 weights: 1.6 PB, beyond any address space, so refused even under overcommit.
    ("train hidden too big for memory",
     "train --text {d}/text.txt --out {d}/o --hidden 10000000 --layers 1 --batch-size 2 --seq-length 10 --val-frac 0",
     "does not fit in memory"),
    ("train hidden not a number", "train --text {d}/text.txt --out {d}/o --hidden 1e3", "invalid int value"),
    ("train peephole on torch", "train --text {d}/text.txt --out {d}/o --cell peephole --backend torch",
     "peephole"),
    ("train out is a file", "train --text {d}/text.txt --out {d}/a_file", "not a directory"),
    ("train no text flag", "train --out {d}/o", "required"),
    # train --resume from a damaged checkpoint: refused, and the checkpoint is left for the user to see.
    ("resume truncated checkpoint", "train --text {d}/text.txt --out {d}/resume_truncated --resume", "--resume"),
    ("resume zero-byte checkpoint", "train --text {d}/text.txt --out {d}/resume_zero --resume", "empty"),
    ("resume flipped bit", "train --text {d}/text.txt --out {d}/resume_flipped --resume", "CRC-32"),
    ("resume another text", "train --text {d}/three.txt --out {d}/run --resume", "not the text"),
]


def _python_m(argv):
    """Run the command as a real `python -m fastlstm.charrnn ARGV`: (status, stdout, stderr)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    r = subprocess.run([sys.executable, "-m", "fastlstm.charrnn", *argv], env=env, capture_output=True,
                       text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr


def _as_python_m(argv) -> int:
    # What the interpreter does around fastlstm/charrnn/__main__.py's `sys.exit(main())`.
    try:
        raise SystemExit(main(argv))
    except SystemExit as e:
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            return e.code
        print(e.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1


def _forked(argv, timeout=60.0):
    """Run the command in a child forked from this process: (status, stdout, stderr); a negative status
    is the signal that killed the child."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 70
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)
                sys.stderr = open(2, "w", closefd=False)
                sys.argv = ["fastlstm-charrnn", *argv]
                code = _as_python_m(argv)
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail(f"{argv} did not finish in {timeout} s")
            time.sleep(0.005)
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), out.read().decode(), err.read().decode()


@pytest.mark.parametrize("name,argv,says", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_status_2(files, name, argv, says):
    args = [a.format(d=files) for a in argv.split()]
    status, out, err = _forked(args)
    assert "Traceback" not in out + err, out + err
    assert status == 2, (status, out + err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fastlstm-charrnn {args[0]}: error: "), lines[0]
    assert says in lines[0], lines[0]
    if name.startswith("resume") and "damaged" in lines[0]:
        # Refused before anything was written: the damaged checkpoint is left for the user to look at.
        out = Path(args[args.index("--out") + 1])
        assert sorted(os.listdir(out)) == ["checkpoint.pt"]


# Through the real program: the forked runs above must be what `python -m fastlstm.charrnn` does.
REAL = ["sample temperature nan", "sample one flipped bit", "train 3-character text", "resume truncated checkpoint"]


@pytest.mark.parametrize("name", REAL)
def test_real_program_gives_the_same_status_and_message(files, name):
    argv = next(c[1] for c in CASES if c[0] == name)
    args = [a.format(d=files) for a in argv.split()]
    real = _python_m(args)
    assert real[0] == 2 and "Traceback" not in real[1] + real[2], real
    assert real == _forked(args)


def test_good_checkpoint_still_samples(files):
    # The checks above must not refuse the good file they were derived from.
    status, out, err = _forked(["sample", "--checkpoint", str(files / "run"), "--prime", "It", "--length", "20",
                                "--seed", "1"])
    assert status == 0 and err == "", err
    assert out.startswith("It") and len(out) == 2 + 20 + 1


# --- the library: the same checks without the command line -------------------------------------------------

def _tensors(blob):
    """Every tensor in a nested checkpoint, as bytes (comparable, nan-safe)."""
    if isinstance(blob, torch.Tensor):
        return [blob.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()]
    items = blob.values() if isinstance(blob, dict) else blob if isinstance(blob, (list, tuple)) else []
    return [t for v in items for t in _tensors(v)]


def test_flipped_bit_in_a_weight_is_refused_not_loaded(files, tmp_path):
    # torch.load does not check the zip archive's CRCs: without our check this file loads, with one
    # weight silently changed.
    good = files / "run" / "checkpoint.pt"
    record = _flip_inside_record(good, tmp_path / "flipped.pt")
    a = torch.load(good, weights_only=True)
    b = torch.load(tmp_path / "flipped.pt", weights_only=True)
    assert _tensors(a) != _tensors(b)  # the hazard is real: a number changed, and nothing said so
    with pytest.raises(CharRNNError, match="record " + record + " fails its CRC-32 check"):
        load_checkpoint(str(tmp_path / "flipped.pt"))
    assert load_checkpoint(str(good))["format"] == 1


def test_library_train_checks_its_options(files, tmp_path):
    args = dict(text=str(files / "text.txt"), out=str(tmp_path / "o"), batch_size=0)
    with pytest.raises(CharRNNError, match="--batch-size must be a positive integer, got 0"):
        train(args)
    with pytest.raises(CharRNNError, match="--dropout must be a number"):
        train(dict(args, batch_size=2, dropout="0.5"))
    assert not (tmp_path / "o").exists()  # refused before anything was created


# --- temporary files of killed writers ------------------------------------------------------------------

def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_are_removed_on_the_next_run(files, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        dead = _dead_pid()
        stale = [f"checkpoint.pt.tmp{dead}", f"loss.png.tmp{dead}", f"metrics.json.tmp{dead}",
                 f"checkpoint.pt.tmp{os.getpid()}"]  # our own pid: we write nothing yet, so not ours
        kept = [f"checkpoint.pt.tmp{live.pid}",  # a live writer's, maybe being written right now
                f"notes.txt.tmp{dead}", f"checkpoint.pt.tmpabc", "checkpoint.pt.tmp", f"log.csv.tmp{dead}",
                f"xcheckpoint.pt.tmp{dead}"]  # not names the writer makes
        for n in stale + kept:
            (out / n).write_bytes(b"x" * 100)
        threads = torch.get_num_threads()
        try:
            assert main(_tiny_train(files / "text.txt", out)) == 0
        finally:
            torch.set_num_threads(threads)
        left = set(os.listdir(out))
        assert not left & set(stale), left
        assert set(kept) <= left, left
        assert {"checkpoint.pt", "log.csv", "loss.png", "metrics.json"} <= left
        # --resume cleans up the same way.
        (out / f"loss.png.tmp{dead}").write_bytes(b"x")
        assert remove_stale_temporaries(str(out)) == [str(out / f"loss.png.tmp{dead}")]
    finally:
        live.kill()
        live.wait()


def test_failed_write_leaves_no_temporary(tmp_path):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")

    def write(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError):
        _atomic_write(str(target), write)
    assert os.listdir(tmp_path) == ["checkpoint.pt"] and target.read_bytes() == b"old"
