"""Benchmark fastlstm's modules against torch's (oneDNN on the CPU, cuDNN on the GPU) and per-step cell loops.

    python -m fastlstm.bench                  # the device's default grid, every dtype (CPU: a few minutes)
    python -m fastlstm.bench --quick          # the quick grid, short timings: under a minute (what CI runs)
    python -m fastlstm.bench --grid cpu       # issue 4's whole CPU grid
    python -m fastlstm.bench --device cuda --grid gpu --json out.json --csv out.csv --plot speedup.png
    python -m fastlstm.bench --shapes "100,32,512,512;50,16,64,64" --modes training,packed --layers 1,2
    python -m fastlstm.bench --models lstm,gru,peephole --dtypes float32

Models: lstm (FastLSTM vs nn.LSTM and an nn.LSTMCell loop), gru (FastGRU vs nn.GRU and an nn.GRUCell loop),
peephole (PeepholeLSTM, diagonal, vs its plain PyTorch loop), layernorm (LayerNormLSTM vs the same model in
plain PyTorch: F.layer_norm and a loop over time; in builds with fastlstm.LayerNormLSTM). Every contender holds
its weights and gets its inputs in the case's dtype (float32, bfloat16, float16; on the CPU nn.LSTM then runs
oneDNN's half path).

Modes (shapes are (T, B, I, H): steps, batch, input size, hidden size):
  inference         forward of the whole sequence under torch.inference_mode();
  training          forward + backward of the whole sequence (gradients of the input and every parameter);
  packed_inference  } the same on a PackedSequence (enforce_sorted=False) of B sequences whose lengths are
  packed_training   } drawn from [1, T] with a fixed seed, the longest T; models lstm and gru, no cell loop;
  streaming         inference with batch 1 and ONE time step per call, the state carried from call to call
                    (a speech or control loop); the time is per call, T is ignored.

Every contender is timed with torch.utils.benchmark (warm-up first, then Timer.blocked_autorange), the
contenders of one case interleaved round by round in the same process, and the median over all rounds is
reported. ratio = baseline median / fastlstm median (> 1: fastlstm is faster), from the same run; geometric
means per dtype, model and mode. Peak memory is that of one call above what existed before it (on the CPU
measured in a worker subprocess). The report starts with the machine, torch, thread count and date.
"""
# The package: cases (Case, the grids), contenders (MODELS: what is timed against what), measure (timing and
# the memory probe), report (environment, table, geomeans, --json/--csv/--plot), cli (argparse, main).
from .cases import (CPU_DEFAULT_SPECS, CPU_SPECS, DTYPES, GPU_SPECS, GRIDS, MODES, QUICK_SPECS, Case, Spec,
                    grid_cases, make_cases, packed_lengths)
from .contenders import CONTENDERS, MODELS, CellLoop, LayerNormLSTMLoop, Model, PeepholeOracle, available_models
from .measure import RATIOS, CpuPeakProbe, make_step, peak_memory, run_case, time_case
from .report import environment, format_table, geomean, write_csv, write_json, write_plot
from .cli import cases_from_args, main, parse_args

__all__ = ["Case", "Spec", "MODES", "DTYPES", "CPU_SPECS", "CPU_DEFAULT_SPECS", "GPU_SPECS", "QUICK_SPECS",
           "GRIDS", "make_cases", "grid_cases", "packed_lengths", "CONTENDERS", "MODELS", "Model", "CellLoop",
           "PeepholeOracle", "LayerNormLSTMLoop", "available_models", "RATIOS", "CpuPeakProbe", "make_step",
           "time_case", "peak_memory", "run_case", "environment", "format_table", "geomean", "write_csv",
           "write_json", "write_plot", "parse_args", "cases_from_args", "main"]
