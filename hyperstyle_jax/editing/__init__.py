"""Editing real images on the HyperStyle-tuned generator (official `editing/`).

Edits are data, not scripts. Each edit is a pure numpy function of ONE image's inversion
    (codes [n_styles, D], deltas, params) -> (codes' [K, n_styles, D], deltas')
where `deltas` is a list with one entry per generator layer (None at untuned layers):
    - unbatched [out, in, k, k] entries: the image's own offsets, shared by all K edits
      (InterFaceGAN, GANSpace: the official editors broadcast d[i] over the edit batch);
    - batched [K, out, in, k, k] entries: one offset per edit (interpolation).
Rendering is apart (`editing.render.EditRenderer`, one compiled function per batch size
and delta kind); so are loading (`load_direction`, `load_pca`) and saving (the CLI layer
`editing.cli`). Each edit is a math module and its subcommand, `cli_<edit>.py`.

    interfacegan.apply(codes, deltas, direction, factors)
    ganspace.apply(codes, deltas, pca, [(component, start, end, strength), ...])
    interpolate.apply(codes_pair [2, n_styles, D], deltas_pair, alphas)
"""


class EditError(ValueError):
    """A user-facing editing error; the message is one line and names the file or option."""
