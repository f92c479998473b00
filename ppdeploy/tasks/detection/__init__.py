"""Object detection: PaddleDetection-style detectors (PP-YOLOE, PicoDet) with NMS in the graph or on the host."""
from ppdeploy.tasks.detection.result import Detection, DetectionResult
from ppdeploy.tasks.detection.task import Detector, DetectorOptions

__all__ = ["Detection", "DetectionResult", "Detector", "DetectorOptions"]
