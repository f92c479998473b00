"""What an optimize run returns: the candidates tried, the winner(s), and the files written."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ppdeploy.optimize.candidates import Candidate


@dataclass
class ModelOptimizeResult:
    model: str
    target: str
    reference: str
    candidates: list[Candidate]
    winner: Candidate | None
    inputs: dict[str, list[int]]
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "target": self.target, "reference": self.reference, "inputs": self.inputs,
                "winner": self.winner.label if self.winner else None,
                "candidates": [asdict(c) for c in self.candidates], "files": self.files}


@dataclass
class OCROptimizeResult:
    target: str
    reference: str
    max_line_loss: float
    stages: dict[str, list[Candidate]]
    winners: dict[str, str]
    combined: dict[str, Any]
    calibration: dict[str, Any]
    evaluation: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    stage_calibration: dict[str, Any] = field(default_factory=dict, repr=False)  # CalibrationSet per stage

    @property
    def rec_guarded(self) -> bool:
        """Whether the chosen rec runs with its FP32 guard."""
        return any(c.status == "winner" and c.guard for c in self.stages.get("rec", []))

    def chosen(self) -> dict[str, tuple[str, str]] | None:
        """Stage -> (backend, precision) of the combination that passed, or None."""
        if not self.combined.get("passed"):
            return None
        out = {}
        for stage, cands in self.stages.items():
            w = next(c for c in cands if c.status == "winner")
            out[stage] = (w.backend, w.precision)
        return out

    def chosen_keep_fp32(self) -> dict[str, list[str]]:
        """Stage -> regions the chosen candidate keeps in FP32 (OCR's keep_fp32), for the stages that keep any."""
        out = {}
        for stage, cands in self.stages.items():
            w = next((c for c in cands if c.status == "winner"), None)
            if w is not None and w.keep_fp32:
                out[stage] = list(w.keep_fp32)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"task": "ocr", "target": self.target, "reference": self.reference, "max_line_loss": self.max_line_loss,
                "winners": self.winners, "combined": self.combined, "calibration": self.calibration,
                "evaluation": self.evaluation,
                "stages": {s: [asdict(c) for c in cs] for s, cs in self.stages.items()}, "files": self.files}
