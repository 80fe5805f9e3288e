"""datatrove's Slurm executor with unset resources left out of the job script.

Kept apart from mixer/executors.py because importing datatrove's Slurm executor is slow,
and the class must live at module level: datatrove pickles the executor into the job.
"""

from __future__ import annotations

from datatrove.executor.slurm import SlurmPipelineExecutor


class SlurmExecutor(SlurmPipelineExecutor):
    def get_sbatch_args(self, max_array: int = 1) -> dict:
        # datatrove writes `#SBATCH --partition` (bare) for partition=None; the cluster's
        # default partition is what a user who gave none expects.
        args = {k: v for k, v in super().get_sbatch_args(max_array).items() if v is not None}
        if isinstance(self.mem_per_cpu_gb, float):  # Slurm takes whole units: 2.5 GB -> 2560M
            args["mem-per-cpu"] = f"{round(self.mem_per_cpu_gb * 1024)}M"
        return args
