"""Golden fixtures for the face nodes, made by running the official DiffBIR face helper
(``diffbir/utils/face.py`` at main 3f8b530) and the facexlib networks it uses, on random weights from
devkit/model_factory.py (the tests rebuild the same weights) and on scikit-image's astronaut.

    .venv-official/bin/python -m tools.goldens.make_faces

Writes tests/golden/faces/*.npz. Official code is run as it is, with two stand-ins where it cannot
run here: the helper's model initialisers (they download weights) return facexlib's own RetinaFace /
ParseNet with the random weights, and torchvision's nms (a compiled op missing on CPU-only torch) is
replaced by the reference greedy NMS below. For the parsing mask the ParseNet call is replaced by fixed
logits (a label map stored in the fixture), so paste-back parity does not depend on a 512 px network
run; the network itself is compared separately at a small size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from devkit import face_data, model_factory
from tools.goldens import official

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

OUT = REPO / "tests" / "golden" / "faces"
SEED_RESNET, SEED_MOBILE, SEED_PARSE = 11, 12, 13

# MTCNN landmarks of skimage astronaut (facenet-pytorch 2.6.0), and synthetic faces around them.
ASTRONAUT_LANDMARKS = np.array([[205.0109, 101.7275], [246.7626, 103.7141], [224.6714, 128.9650],
                                [201.7161, 139.2462], [245.2655, 141.8570]])


def reference_nms(boxes, scores, threshold):
    """Greedy IoU NMS with torchvision.ops.nms's semantics (areas (x1-x0)*(y1-y0), suppress IoU > t)."""
    boxes = np.asarray(boxes, np.float64)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0) * (y1 - y0)
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)
        h = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= threshold]
    return keep


def transformed_landmarks(base, angle_deg, scale, shift):
    a = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * scale
    centre = base.mean(0)
    return (base - centre) @ rotation.T + centre + np.asarray(shift)


def label_map():
    """A synthetic 19-class face parsing map at 512 (skin ellipse, hair cap, neck, a necklace blob)."""
    y, x = np.mgrid[0:512, 0:512]
    labels = np.zeros((512, 512), np.int64)
    labels[((x - 256) / 150.0) ** 2 + ((y - 280) / 200.0) ** 2 < 1] = 1
    labels[(((x - 256) / 190.0) ** 2 + ((y - 200) / 170.0) ** 2 < 1) & (y < 190)] = 17
    labels[(np.abs(x - 256) < 70) & (y > 430)] = 14
    labels[(np.abs(x - 210) < 25) & (np.abs(y - 250) < 12)] = 4
    labels[(np.abs(x - 256) < 50) & (np.abs(y - 380) < 15)] = 11
    return labels


def main():
    import cv2
    import skimage.data

    official.activate("main")
    import diffbir.utils.face as face_module
    import facexlib.detection.retinaface as retinaface_module
    from facexlib.detection.retinaface import RetinaFace
    from facexlib.parsing.parsenet import ParseNet

    retinaface_module.py_cpu_nms = lambda dets, thresh: reference_nms(dets[:, :4], dets[:, 4], thresh)
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)

    def retinaface(backbone):
        name, ours, seed = (("resnet50", "resnet50", SEED_RESNET) if backbone == "resnet50"
                            else ("mobile0.25", "mobilenet0.25", SEED_MOBILE))
        net = RetinaFace(network_name=name, device="cpu")
        layout = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        assert layout == model_factory.retinaface_layout(ours), f"model_factory layout differs from facexlib ({name})"
        sd = model_factory.face_state_dict(layout, seed, model_factory.FACE_VAR_BASE[f"retinaface_{ours}"])
        net.load_state_dict(sd, strict=True)
        return net.eval()

    def parsenet():
        net = ParseNet(in_size=512, out_size=512, parsing_ch=19)
        layout = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        assert layout == model_factory.parsenet_layout(), "model_factory layout differs from facexlib (ParseNet)"
        sd = model_factory.face_state_dict(layout, SEED_PARSE, model_factory.FACE_VAR_BASE["parsenet"])
        net.load_state_dict(sd, strict=True)
        return net.eval()

    astronaut = skimage.data.astronaut()  # RGB uint8 512x512

    # 1. networks: RetinaFace forward (both trunks) and ParseNet forward on small inputs
    gen = torch.Generator().manual_seed(0)
    nets = {}
    for backbone in ("resnet50", "mobilenet0.25"):
        x = torch.randn(1, 3, 48, 64, generator=gen) * 60
        net = retinaface(backbone)
        nets[backbone] = net
        loc, conf, landm = net(x)
        np.savez_compressed(OUT / f"retinaface_forward_{backbone}.npz", input=x.numpy(), loc=loc.numpy(),
                            conf=conf.numpy(), landmarks=landm.numpy())
    x = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    logits, image = parsenet()(x)
    np.savez_compressed(OUT / "parsenet_forward.npz", input=x.numpy(), logits=logits.numpy(), image=image.numpy())

    # 2. RetinaFace.detect_faces on a small photo (both trunks), thresholds low enough for random weights
    small = np.ascontiguousarray(astronaut[::4, ::4])  # 128x128 RGB
    detections = {}
    for backbone in ("resnet50", "mobilenet0.25"):
        net = nets[backbone]
        scores = net.detect_faces(small, conf_threshold=0.0, nms_threshold=1.1)[:, 4]
        threshold = float(np.quantile(scores, 0.9))  # keep the top 10% before NMS
        detections[f"{backbone}_threshold"] = threshold
        detections[backbone] = net.detect_faces(small, conf_threshold=threshold, nms_threshold=0.4)
    np.savez_compressed(OUT / "retinaface_detect.npz", **detections)

    # 3. the helper's detection (resize to 640, eye-distance filter with its index slip), MobileNet trunk
    face_module.init_detection_model = lambda *a, **k: nets["mobilenet0.25"]
    face_module.init_parsing_model = lambda *a, **k: None
    helper = face_module.FaceRestoreHelper(upscale_factor=1, face_size=512, use_parse=False,
                                           det_model="retinaface_mobile0.25", device="cpu")
    medium = np.ascontiguousarray(astronaut[::2, ::2])  # 256x256 -> detected at 640x640
    scale = 640 / 256
    resized = cv2.resize(medium, (640, 640), interpolation=cv2.INTER_LINEAR)
    raw_scores = nets["mobilenet0.25"].detect_faces(resized, conf_threshold=0.0, nms_threshold=1.1)[:, 4]
    # make the official default threshold (0.8) meaningful for random weights: report which detections
    # the helper keeps at its own settings, and at a threshold that keeps ~1% of the anchors
    threshold = float(np.quantile(raw_scores, 0.99))
    original_detect = nets["mobilenet0.25"].detect_faces
    nets["mobilenet0.25"].detect_faces = lambda img, conf_threshold=0.8, nms_threshold=0.4: original_detect(
        img, conf_threshold=threshold, nms_threshold=nms_threshold)
    helper.read_image(medium.copy())
    helper.input_img = medium.copy()  # read_image would upscale to 512; keep 256 so the 640 resize is exercised
    helper.get_face_landmarks_5(resize=640, eye_dist_threshold=5)
    nets["mobilenet0.25"].detect_faces = original_detect
    np.savez_compressed(OUT / "helper_detect.npz", threshold=threshold, scale=scale,
                        resized_sample=resized[::5, ::5],
                        det_faces=np.array(helper.det_faces, np.float64).reshape(-1, 5),
                        landmarks=np.array(helper.all_landmarks_5, np.float64).reshape(-1, 5, 2))

    # 4. similarity fits (cv2.estimateAffinePartial2D LMEDS) for realistic and outlier landmark sets
    template = helper.face_template
    rng = np.random.default_rng(5)
    sets = [ASTRONAUT_LANDMARKS,
            transformed_landmarks(ASTRONAUT_LANDMARKS, 25, 1.7, (40, 60)),
            transformed_landmarks(ASTRONAUT_LANDMARKS, -40, 0.4, (-90, 200)),
            ASTRONAUT_LANDMARKS + rng.normal(0, 2.0, (5, 2)),
            np.vstack([ASTRONAUT_LANDMARKS[:4], [[300.0, 40.0]]]),  # one wild point
            np.vstack([[[150.0, 200.0]], ASTRONAUT_LANDMARKS[1:]])]
    matrices = [cv2.estimateAffinePartial2D(s, template, method=cv2.LMEDS)[0] for s in sets]
    np.savez_compressed(OUT / "similarity.npz", landmarks=np.stack(sets), template=template,
                        matrices=np.stack(matrices))

    # 5. align + paste-back with the helper, faces given by landmarks (no detector involved)
    def run_helper(image, landmarks, face_size, restored, background, parse_labels=None):
        helper = face_module.FaceRestoreHelper(upscale_factor=1, face_size=face_size,
                                               use_parse=parse_labels is not None,
                                               det_model="retinaface_mobile0.25", device="cpu")
        if parse_labels is not None:
            logits = torch.from_numpy(np.eye(19, dtype=np.float32)[parse_labels]).permute(2, 0, 1)[None]
            helper.face_parse = lambda face_input: (logits, None)
        helper.input_img = image.copy()
        helper.all_landmarks_5 = [np.asarray(lm, np.float64) for lm in landmarks]
        helper.align_warp_face()
        helper.get_inverse_affine()
        for face in restored:
            helper.add_restored_face(face)
        blurs = []
        real_blur = cv2.GaussianBlur

        def recording_blur(src, ksize, sigma, *args, **kwargs):
            out = real_blur(src, ksize, sigma, *args, **kwargs)
            blurs.append((ksize[0], out))
            return out

        face_module.cv2.GaussianBlur = recording_blur
        try:
            pasted = helper.paste_faces_to_input_image(upsample_img=background.copy())
        finally:
            face_module.cv2.GaussianBlur = real_blur
        soft = [b for k, b in blurs if k != 101]  # the per-face soft masks (101 = the parse-mask blurs)
        parse = [b for k, b in blurs if k == 101][1::2]  # second blur of each parse mask
        return helper, pasted, soft, parse

    image = np.ascontiguousarray(astronaut[::2, ::2])  # 256x256 (the tests slice astronaut the same way)
    background = (image // 2 + 64).astype(np.uint8)
    base = ASTRONAUT_LANDMARKS / 2
    faces = [base, transformed_landmarks(base, 30, 0.9, (30, 20)),  # overlaps the first
             transformed_landmarks(base, -15, 0.6, (-100, 110))]  # partly outside the image
    for face_size in (128, 512):
        restored = [face_data.restored_pattern(i, face_size) for i in range(len(faces))]
        labels = label_map()
        for use_parse in (False, True):
            helper, pasted, soft, parse = run_helper(image, faces, face_size, restored, background,
                                                     labels if use_parse else None)
            crops = np.stack(helper.cropped_faces)
            step = max(1, face_size // 128)
            np.savez_compressed(
                OUT / f"paste_{face_size}{'_parse' if use_parse else ''}.npz", landmarks=np.stack(faces),
                affine=np.stack(helper.affine_matrices), inverse=np.stack(helper.inverse_affine_matrices),
                crops_sampled=crops[:, ::step, ::step], crop_step=step,
                pasted=pasted, soft_masks=np.stack(soft).astype(np.float32),
                # every face gets the same label map, so one parse mask (x255, before resizing), sampled
                **({"labels": labels.astype(np.uint8), "parse_mask_sampled": parse[0][::4, ::4].astype(np.float32)}
                   if use_parse else {}))
    for path in sorted(OUT.glob("*.npz")):
        print(f"{path.relative_to(REPO)}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
