"""Face detectors that give 5 landmarks, in plain torch (no torchvision ops, no facexlib):

- RetinaFace (ResNet-50 and MobileNet-0.25), the detector DiffBIR's face helper uses. The module
  names follow facexlib's ``RetinaFace`` so the published files ``detection_Resnet50_Final.pth`` and
  ``detection_mobilenet0.25_Final.pth`` load as they are. Detection = facexlib's ``detect_faces``
  with its defaults (confidence 0.8, NMS 0.4, the image at its own size).
- MTCNN (P-, R-, O-Net), whose weights ship inside the ``facenet-pytorch`` package
  (``facenet_pytorch/data/{pnet,rnet,onet}.pt``); the cascade follows facenet-pytorch's
  ``detect_face`` (minimum face 20 px, thresholds 0.6/0.7/0.7, pyramid factor 0.709).

Both return boxes [N, 5] (x0, y0, x1, y1, score) and landmarks [N, 5, 2] (left eye, right eye,
nose, left and right mouth corner; "left" = smaller x in the image) in input pixels, best first.
"""

from .mtcnn import MTCNN, build_mtcnn, mtcnn_detect
from .nms import nms
from .retinaface import RetinaFace, build_retinaface, prior_boxes, retinaface_backbone_of, retinaface_detect

__all__ = ["MTCNN", "RetinaFace", "build_mtcnn", "build_retinaface", "mtcnn_detect", "nms", "prior_boxes",
           "retinaface_backbone_of", "retinaface_detect"]
