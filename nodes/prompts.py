"""Prompt nodes: the official default prompts per version and a text encoder with the official
tokenisation (one 77-token chunk)."""

from comfy_api.latest import io

from ..diffbir_modules import prompts
from . import menu


class DiffBIRDefaultPrompts(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRDefaultPrompts",
            **menu.search("prompt", "positive", "negative", "caption"),
            display_name="DiffBIR Default Prompts",
            category=menu.CONTROL,
            description=(
                "The official prompts and CFG scale of a DiffBIR version: v1 empty prompts, cfg 1; v2 empty "
                "positive, negative 'low quality, blurry, ...', cfg 4; v2.1 the long 'Cinematic, High Contrast, ...' "
                "positive and 'painting, oil painting, ...' negative, cfg 6. An optional caption goes in front of "
                "the positive prompt as the official captioners' output does. Higher cfg: sharper, more generated "
                "detail, less faithful."),
            inputs=[
                io.Combo.Input("version", options=list(prompts.DEFAULTS), default="v2.1", tooltip=(
                    "The DiffBIR version whose defaults to give.")),
                io.String.Input("caption", default="", multiline=True, optional=True, tooltip=(
                    "Optional description of the image (what the official LLaVA/RAM captioner would give); joined "
                    "in front of the positive prompt with ', '.")),
            ],
            outputs=[
                io.String.Output(display_name="positive", tooltip="The positive prompt (caption + default)."),
                io.String.Output(display_name="negative", tooltip="The negative prompt."),
                io.Float.Output(display_name="cfg", tooltip=(
                    "The official CFG scale (v1 1, v2 4, v2.1 6; the v2.1 README and demo use 8).")),
            ],
        )

    @classmethod
    def execute(cls, version, caption="") -> io.NodeOutput:
        positive, negative, cfg = prompts.default_prompts(version, caption or "")
        return io.NodeOutput(positive, negative, cfg)


class DiffBIRTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DiffBIRTextEncode",
            **menu.search("prompt", "clip text encode", "text", "caption"),
            display_name="DiffBIR Text Encode",
            category=menu.CONTROL,
            description=(
                "CLIP Text Encode with DiffBIR's official tokenisation: one 77-token chunk (longer prompts are cut "
                "after 75 tokens, as the official OpenCLIP tokenizer does; ComfyUI's own encoder instead adds more "
                "chunks), parentheses as plain text, HTML entities and whitespace cleaned. Use it to reproduce "
                "official runs; turn truncate off to let long prompts (caption + v2.1 default) count in full."),
            inputs=[
                io.Clip.Input("clip", tooltip="The SD 2.1 text encoder from the checkpoint loader."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default="", tooltip="The prompt."),
                io.Boolean.Input("truncate", default=True, tooltip=(
                    "On (official): keep only the first 75 tokens in one chunk. Off: ComfyUI's chunking, every "
                    "token counts.")),
                io.Boolean.Input("prompt_weights", default=False, tooltip=(
                    "Off (official): '(word:1.2)' is plain text. On: ComfyUI's weight syntax and embeddings.")),
            ],
            outputs=[io.Conditioning.Output(tooltip="The encoded prompt.")],
        )

    @classmethod
    def execute(cls, clip, text, truncate=True, prompt_weights=False) -> io.NodeOutput:
        if clip is None:
            raise ValueError("no CLIP model: the checkpoint has no text encoder; load one with a CLIP loader")
        tokens = prompts.official_tokens(clip, text, truncate=truncate, weights=prompt_weights)
        return io.NodeOutput(clip.encode_from_tokens_scheduled(tokens))
