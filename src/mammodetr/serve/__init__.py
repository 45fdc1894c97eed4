"""``mammodetr serve``: a reader-assist viewer in the browser, for research use only.

One static page (``static/``: HTML, JavaScript and CSS, no build step, nothing from a CDN) over a JSON API
(:mod:`.app`) that predicts through the :class:`~mammodetr.inference.predictor.Predictor`. Needs
``mammodetr[serve]`` (Starlette, uvicorn, python-multipart). Security rules: :mod:`.security`, :mod:`.store`,
:mod:`.uploads`; docs/viewer.md.
"""
