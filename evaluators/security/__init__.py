"""Client task code and files made safe: sandboxed templates, the bounded task box, bounded YAML/regex, checked and staged files."""
