"""Glue between deepem's kernels and other codebases, each imported only on request.

    import deepem.integrations.monai as dm   # needs monai; `import deepem` never imports it

Nothing here is imported by `import deepem` or `import deepem.ops`.
"""
