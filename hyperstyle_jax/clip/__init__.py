"""CLIP around the Flax model (`models/clip.py`): tokenizer, preprocessing, loading, text features.

    from hyperstyle_jax.clip import ClipEncoder, load_clip, tokenize, preprocess_images
"""
from hyperstyle_jax.clip.encoder import (  # noqa: F401
                                         KIND,
                                         ClipEncoder,
                                         averaged_text_features,
                                         delta_i_from_features,
                                         load_clip,
                                         styleclip_templates,
)
from hyperstyle_jax.clip.preprocess import (  # noqa: F401
                                         CLIP_MEAN,
                                         CLIP_STD,
                                         preprocess_batch,
                                         preprocess_image,
                                         preprocess_images,
)
from hyperstyle_jax.clip.tokenizer import SimpleTokenizer, get_tokenizer, tokenize  # noqa: F401
