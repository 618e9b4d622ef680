"""The hint of a sweep-spec error that has no more specific one."""

SPEC_HINT = "see the sweep spec format in README.md, section `onnxq sweep`"
