"""`ppdeploy optimize`: choose the fastest backend/precision that keeps accuracy, for one model or the OCR task."""
from ppdeploy.optimize.candidates import Candidate, candidate_matrix, pick_winner
from ppdeploy.optimize.models import optimize_model
from ppdeploy.optimize.ocr import optimize_ocr
from ppdeploy.optimize.report import model_markdown, ocr_optimize_section
from ppdeploy.optimize.results import ModelOptimizeResult, OCROptimizeResult

__all__ = ["Candidate", "ModelOptimizeResult", "OCROptimizeResult", "candidate_matrix", "model_markdown",
           "ocr_optimize_section", "optimize_model", "optimize_ocr", "pick_winner"]
