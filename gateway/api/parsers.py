from rest_framework.parsers import BaseParser


class YAMLTextParser(BaseParser):
    """Takes a raw YAML body as bytes; the spec loader decodes and validates it (size, UTF-8)."""

    media_type = "application/yaml"

    def parse(self, stream, media_type=None, parser_context=None):
        return stream.read() if stream is not None else b""


class YAMLTextAltParser(YAMLTextParser):
    media_type = "text/yaml"


class YAMLTextXParser(YAMLTextParser):
    media_type = "application/x-yaml"


YAML_PARSERS = [YAMLTextParser, YAMLTextAltParser, YAMLTextXParser]
