"""datatrove's Slurm executor, with job scripts that hold no unchecked or unquoted value.

Kept apart from mixer/executors.py because importing datatrove's Slurm executor is slow,
and the class must live at module level: datatrove pickles the executor into the job.

What differs from datatrove's script, and why:
* Unset resources are left out (datatrove writes a bare `#SBATCH --partition` for None; the
  cluster's default partition is what a user who gave none expects); memory is whole MB.
* Every `#SBATCH` value is checked for control characters again here (a newline would end
  the comment line and start a command) and double-quoted when it holds a blank, as
  sbatch's own parser reads quotes; the values themselves hold no quotes or backslashes
  (mixer.executors.check_text).
* The shell lines quote what they carry: the job name in the echo line, the paths in the
  command (datatrove writes `launch_pickled_pipeline /path` as is, so a folder with a blank
  or a `$(...)` in its name would split or run).
"""

from __future__ import annotations

import re
import shlex

from datatrove.executor.slurm import SlurmPipelineExecutor

from mixer.executors import check_text


def sbatch_line(key: str, value: object) -> str:
    text = check_text(f"#SBATCH --{key}", str(value)) if value not in (None, "") else ""
    if not text:
        return f"#SBATCH --{key}"
    return f'#SBATCH --{key}="{text}"' if any(c.isspace() for c in text) else f"#SBATCH --{key}={text}"


class SlurmExecutor(SlurmPipelineExecutor):
    def get_sbatch_args(self, max_array: int = 1) -> dict:
        args = {k: v for k, v in super().get_sbatch_args(max_array).items() if v is not None}
        if isinstance(self.mem_per_cpu_gb, float):  # Slurm takes whole units: 2.5 GB -> 2560M
            args["mem-per-cpu"] = f"{round(self.mem_per_cpu_gb * 1024)}M"
        return args

    def _quoted(self, run_script: str) -> str:
        """datatrove's command with each of its paths (a whole word between blanks, or the
        end) quoted for the shell."""
        for name in ("executor.pik", "stats.json", "stats"):
            path = check_text("a job script path", self.logging_dir.resolve_paths(name))
            run_script = re.sub(rf"(?<= ){re.escape(path)}(?= |$)", lambda _: shlex.quote(path), run_script)
        return run_script

    def get_launch_file_contents(self, sbatch_args: dict, run_script: str) -> str:
        lines = ["#!/bin/bash", *(sbatch_line(k, v) for k, v in sbatch_args.items())]
        lines += [
            f"echo {shlex.quote('Starting data processing job ' + self.job_name)}",
            self.env_command or "",
            "set -xe",
            "export PYTHONUNBUFFERED=TRUE",
            self._quoted(run_script),
        ]
        return "\n".join(lines) + "\n"
