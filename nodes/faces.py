"""Face nodes: DiffBIR's faces-in-the-wild pipeline as separate nodes around the usual stage-1 /
IRControlNet / KSampler chain. Detect & align gives a batch of aligned crops to restore with the face
weights; paste-back puts the restored crops onto the restored background."""

import logging

import comfy.model_management
import comfy.utils
from comfy_api.latest import io

from ..diffbir_modules import downloads, face_models, guards, host_memory, images
from ..diffbir_modules import faces as face_pipeline
from . import menu

FaceDetector = io.Custom("DIFFBIR_FACE_DETECTOR")
FaceParser = io.Custom("DIFFBIR_FACE_PARSER")
Faces = io.Custom("DIFFBIR_FACES")

QUIRKS_TOOLTIP = (
    "Reproduce the official DiffBIR helper exactly, including two slips: it feeds RetinaFace RGB where the network "
    "was trained on BGR, and its eye-distance filter reads the wrong landmark entries. Off: the channel order the "
    "network was trained with and the real eye distance (usually the same faces, slightly different landmarks). On, "
    "the crops are also rounded to 8-bit levels, as the official helper's uint8 warp makes them.")


class DiffBIRFaceDetectorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRFaceDetectorLoader",
            **menu.search("face", "face detection", "retinaface", "load face detector"),
            display_name="DiffBIR Face Detector Loader",
            category=menu.FACES,
            description=(
                "Loads a 5-landmark face detector for DiffBIR Face Detect & Align. RetinaFace ResNet-50 is what "
                "official DiffBIR uses (most accurate); MobileNet-0.25 is faster and misses more small or turned "
                "faces. Their files live in models/facedetection (detection_Resnet50_Final.pth, "
                "detection_mobilenet0.25_Final.pth) and are downloaded there on first use when online. MTCNN works "
                "fully offline with the weights of the facenet-pytorch package (see docs/faces.md)."),
            inputs=[
                io.Combo.Input("detector", options=list(face_models.DETECTORS), default="retinaface_resnet50",
                               tooltip=(
                                   "retinaface_resnet50: official DiffBIR choice. retinaface_mobilenet0.25: lighter. "
                                   "mtcnn: offline (facenet-pytorch weights), finds fewer profile faces.")),
                io.Boolean.Input("download_if_missing", default=True, tooltip=(
                    "Download a missing RetinaFace file from facexlib's GitHub releases into models/facedetection. "
                    "Off: fail with instructions instead.")),
            ],
            outputs=[FaceDetector.Output(display_name="detector", tooltip="The loaded face detector.")],
        )

    @classmethod
    def validate_inputs(cls, detector="retinaface_resnet50", download_if_missing=True):
        # (declaring ``detector`` here replaces ComfyUI's own check of the combo value)
        if detector not in face_models.DETECTORS:
            return f"unknown face detector {detector!r}; choose one of {', '.join(face_models.DETECTORS)}"
        if detector not in face_models.RETINAFACE_KEYS:
            return True
        return downloads.missing_before_run([face_models.RETINAFACE_KEYS[detector]], download_if_missing,
                                              "download_if_missing") or True

    @classmethod
    def execute(cls, detector, download_if_missing=True) -> io.NodeOutput:
        return io.NodeOutput(face_models.load_detector(detector, allow_download=download_if_missing))


class DiffBIRFaceDetectAlign(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRFaceDetectAlign",
            **menu.search("face", "face restore", "face detection", "retinaface", "align face", "crop face",
                restore=True),
            display_name="DiffBIR Face Detect & Align",
            category=menu.FACES,
            description=(
                "Finds faces (5 landmarks each) and warps each one onto the FFHQ 512 template, as DiffBIR's "
                "faces-in-the-wild mode does. Restore the crops with the face weights in the usual DiffBIR chain "
                "(one batch), restore the whole image with the general weights, then join them with DiffBIR Face "
                "Paste Back. Feed it the image at the size the background will be restored to (e.g. after the "
                "same upscale). When no face is selected the crops carry one grey placeholder, the paste node "
                "returns the background as it is, and the log says so."),
            inputs=[
                io.Image.Input("image", tooltip="The image (or batch) to find faces in."),
                FaceDetector.Input("detector", tooltip="From DiffBIR Face Detector Loader."),
                io.Int.Input("face_size", default=512, min=64, max=2048, step=8, tooltip=(
                    "Side of the aligned crops. DiffBIR's face models are trained at 512; other sizes scale the "
                    "template.")),
                io.Combo.Input("selection", options=list(face_pipeline.SELECT_MODES), default="all", tooltip=(
                    "all: every face (official). largest: the biggest box. center: the face nearest the image "
                    "centre. indices: the faces listed in 'indices' (numbers shown on the preview).")),
                io.String.Input("indices", default="0", tooltip=(
                    "For selection 'indices': face numbers as on the preview, e.g. '0, 2' or '1-3'; -1 is the "
                    "last face. Numbers that do not exist are ignored.")),
                io.Int.Input("min_size", default=0, min=0, max=8192, tooltip=(
                    "Skip faces whose box is smaller than this many pixels (shorter side), in every selection "
                    "mode. 0 keeps all; raise it to leave tiny background faces alone.")),
                io.Combo.Input("order", options=list(face_pipeline.ORDERS), default="left to right", tooltip=(
                    "How faces are numbered (and the crops ordered): left to right (stable as the image "
                    "changes), largest first, or the detector's score order.")),
                io.Float.Input("confidence", default=0.8, min=0.0, max=1.0, step=0.01, tooltip=(
                    "Minimum detection score (official RetinaFace: 0.8). Raise it to drop false detections, lower "
                    "it to catch blurry faces.")),
                io.Int.Input("detection_size", default=640, min=0, max=4096, step=32, tooltip=(
                    "Images whose short side is smaller are scaled up to this for detection only (official: "
                    "640); helps with small faces. 0: detect at the image's own size.")),
                io.Float.Input("eye_distance_threshold", default=5.0, min=0.0, max=1000.0, step=0.5, tooltip=(
                    "Drop faces whose eyes are closer than this many pixels (profile or tiny faces; official: 5).")),
                io.Boolean.Input("official_quirks", default=False, tooltip=QUIRKS_TOOLTIP),
            ],
            outputs=[
                io.Image.Output(display_name="crops", tooltip=(
                    "The aligned face crops, one per selected face (all images of the batch, in order): restore "
                    "them with the face weights.")),
                Faces.Output(display_name="faces", tooltip=(
                    "Where each crop came from (image index, box, landmarks, affine matrix, image size): connect "
                    "to DiffBIR Face Paste Back.")),
                io.Image.Output(display_name="preview", tooltip=(
                    "The input with every detected face boxed and numbered: green = selected, red = skipped.")),
            ],
        )

    @classmethod
    def validate_inputs(cls, indices="0"):
        if indices is None:  # linked from another node: checked when it runs
            return True
        try:
            face_pipeline.parse_indices(indices)
        except ValueError as error:
            return f"DiffBIR Face Detect & Align: {error}"
        return True

    @classmethod
    def execute(cls, image, detector, face_size=512, selection="all", indices="0", min_size=0,
                order="left to right", confidence=0.8, detection_size=640, eye_distance_threshold=5.0,
                official_quirks=False) -> io.NodeOutput:
        guards.require_finite_settings("DiffBIR Face Detect & Align", confidence=confidence,
                                       eye_distance_threshold=eye_distance_threshold)
        guards.require_finite("DiffBIR Face Detect & Align", "image", image)
        rgb, _ = images.split_alpha(image)
        bar = comfy.utils.ProgressBar(rgb.shape[0])

        def run_detector(image_255, quirks):
            comfy.model_management.throw_exception_if_processing_interrupted()
            return detector.detect(image_255, quirks, confidence)

        crops, faceset, found = face_pipeline.detect_and_align(
            rgb, run_detector, face_size=face_size, detection_size=detection_size,
            eye_distance_threshold=eye_distance_threshold, mode=selection, indices=indices, min_size=min_size,
            order=order, official_quirks=official_quirks, detector_name=detector.name,
            progress=lambda done: bar.update_absolute(done))
        logging.info("DiffBIR Face Detect & Align: %s", faceset.message)
        if len(faceset) == 0:
            faceset.message += "; the crops output carries one grey placeholder, paste-back will skip it"
            logging.warning("DiffBIR Face Detect & Align: no face selected (%s)", faceset.message)
            crops = face_pipeline.placeholder_crop(face_size)
        preview = face_pipeline.draw_preview(rgb, found)
        return io.NodeOutput(images.join_alpha(crops, None), faceset, images.join_alpha(preview, None))


class DiffBIRFaceParserLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRFaceParserLoader",
            **menu.search("face", "face parsing", "face mask", "bisenet", "parsenet"),
            display_name="DiffBIR Face Parser Loader",
            category=menu.FACES,
            description=(
                "Loads ParseNet (models/facedetection/parsing_parsenet.pth, downloaded there on first use when "
                "online). Connected to DiffBIR Face Paste Back it limits each pasted face to skin, eyes, nose, "
                "mouth and neck, as official DiffBIR does, so hair and background keep the background's version."),
            inputs=[
                io.Boolean.Input("download_if_missing", default=True, tooltip=(
                    "Download parsing_parsenet.pth from facexlib's GitHub releases when it is missing. Off: fail "
                    "with instructions instead.")),
            ],
            outputs=[FaceParser.Output(display_name="face_parser", tooltip="The loaded ParseNet.")],
        )

    @classmethod
    def validate_inputs(cls, download_if_missing=True):
        return downloads.missing_before_run([face_models.PARSENET_KEY], download_if_missing,
                                            "download_if_missing") or True

    @classmethod
    def execute(cls, download_if_missing=True) -> io.NodeOutput:
        return io.NodeOutput(face_models.load_parser(allow_download=download_if_missing))


class DiffBIRFacePasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRFacePasteBack",
            **menu.search("face", "face restore", "paste face", "face swap back", "blend face", restore=True),
            display_name="DiffBIR Face Paste Back",
            category=menu.FACES,
            description=(
                "Pastes restored face crops back onto the restored background through the inverse of each "
                "alignment warp, with DiffBIR's soft mask (eroded and blurred in proportion to the face size) and "
                "optionally its ParseNet face mask. Handles overlapping faces and batches whose images have "
                "different numbers of faces. The background may be larger than the image the faces were found "
                "in (e.g. restored at 2x): the faces are scaled to it."),
            inputs=[
                io.Image.Input("background", tooltip="The whole image restored with the general weights."),
                io.Image.Input("restored_faces", tooltip=(
                    "The crops of DiffBIR Face Detect & Align after restoration (same order; any square size).")),
                Faces.Input("faces", tooltip="The faces output of DiffBIR Face Detect & Align."),
                io.Combo.Input("color_match", options=["none", "wavelet", "adain"], default="none", tooltip=(
                    "none: paste the faces as restored (official). wavelet: take each face's colour and shading "
                    "from the background under it, keep its details (hides colour seams). adain: match each "
                    "face's mean and contrast to the background under it.")),
                io.Float.Input("feather", default=1.0, min=0.0, max=4.0, step=0.05, tooltip=(
                    "Width of the soft edge relative to the official one (1.0: official, 1/20 of the face size). "
                    "Larger hides seams better but keeps more of the background around the face; 0 is a hard "
                    "edge.")),
                FaceParser.Input("face_parser", optional=True, tooltip=(
                    "Optional, from DiffBIR Face Parser Loader: paste only the face itself (official DiffBIR does).")),
                io.Boolean.Input("official_quirks", default=False, tooltip=(
                    "Paste as official DiffBIR does: on 8 bits (the faces and the background truncated to "
                    "uint8 levels, the warped face rounded, the result truncated; up to a level of loss) and, "
                    "with a face parser, ParseNet fed BGR (it was trained on RGB). Off: float throughout, RGB.")),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The background with the restored faces pasted in."),
                io.Mask.Output(display_name="mask", tooltip=(
                    "How much of each pixel comes from the pasted faces (1 = face, 0 = background).")),
            ],
        )

    @classmethod
    def execute(cls, background, restored_faces, faces, color_match="none", feather=1.0, face_parser=None,
                official_quirks=False) -> io.NodeOutput:
        guards.require_finite_settings("DiffBIR Face Paste Back", feather=feather)
        guards.require_finite("DiffBIR Face Paste Back", "background", background)
        guards.require_finite("DiffBIR Face Paste Back", "restored_faces", restored_faces)
        bg, alpha = images.split_alpha(background)
        if len(faces) == 0:
            logging.warning("DiffBIR Face Paste Back: no faces to paste (%s); the background is returned as it is",
                            faces.message or "none detected")
            mask = bg.new_zeros(bg.shape[0], *bg.shape[-2:])
            return io.NodeOutput(images.join_alpha(bg, alpha), mask)
        crops, _ = images.split_alpha(restored_faces)
        if crops.shape[-1] != crops.shape[-2]:
            raise ValueError(f"restored faces must be square crops, got {crops.shape[-1]}x{crops.shape[-2]}")
        parse = None
        if face_parser is not None:
            comfy.model_management.throw_exception_if_processing_interrupted()
            # the official helper parses its uint8 face
            parse = face_parser.masks(face_pipeline.to_levels(crops).float() / 255 if official_quirks else crops,
                                      official_quirks)
        bar = comfy.utils.ProgressBar(len(faces))

        def progress(done):
            comfy.model_management.throw_exception_if_processing_interrupted()
            bar.update_absolute(done)

        out, mask = face_pipeline.paste_faces(bg, crops, faces, parse_masks=parse, color_match=color_match,
                                               feather=feather, progress=progress,
                                               eight_bit=official_quirks)
        host_memory.release()
        return io.NodeOutput(images.join_alpha(out, alpha), mask.clamp(0, 1).float().cpu())

