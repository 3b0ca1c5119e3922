"""Video: edit a face through a clip (`python -m hyperstyle_jax.edit <subcommand> --video`).

Needs the `video` extra (PyAV) and the `align` extra (dlib). Modules:
    io         Decoder / Encoder (PyAV): RGB frames with their timestamps in, H.264 out with
               the audio stream copied; VideoError (one line naming the file)
    tracks     fill_gaps, gaussian_smooth (bounded windows over frames), quads, jitter
    pipeline   the streaming stages, VideoContext (the edit CLI's context for a clip),
               ClipWriter (paste-back + encoders + flicker), edit_clip, edit_videos
    synthetic  pan-and-zoom test clips and the stubbed stream (tests, benchmarks)
Importing this package does not import av; the stages import it when they run.
"""
