"""Schemas whose hot paths skip marshmallow's generic per-field machinery.

marshmallow's generic path (accessor lookup, missing/default handling, one method call per
field and value, an error store) costs more than the conversions themselves: for a page of
hundreds of jobs on the way out, and for the dozen optional fields of a create on the way
in, of which a typical body sets three or four. Each mixin here generates one function
per schema from the declared fields, so the schema stays the one definition (and the
OpenAPI document's source), and a test checks the result against marshmallow's own.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, ValidationError, fields, missing

from llm_train_api.api.schema_base import Schema


class LeanDumpSchema(Schema):
    """A schema whose dump runs one generated function per schema instead of marshmallow's
    generic per-field machinery.

    marshmallow's generic path (accessor lookup, missing/default handling, one method call
    per field and value) costs more than the conversions themselves when a page holds
    hundreds of objects. The generated function reads the same attributes, writes the same
    keys and applies the same conversions, inlined for the field types whose conversion is
    trivial and through the field's own `_serialize` for any other. It is derived from the
    declared fields, so the schema stays the one definition; a test checks that the output
    equals marshmallow's own dump.
    """

    def dump(self, obj: Any, *, many: bool | None = None) -> Any:
        if self._hooks["pre_dump"] or self._hooks["post_dump"]:
            return super().dump(obj, many=many)
        one = self.__dict__.get("_lean_dump") or self._compile_dump()
        many = self.many if many is None else bool(many)
        return [one(item) for item in obj] if many else one(obj)

    def _compile_dump(self):
        namespace: dict[str, Any] = {}
        items = []
        for index, (name, field) in enumerate(self.dump_fields.items()):
            attr = field.attribute or name
            if not attr.isidentifier():
                raise TypeError(f"lean dump needs identifier attributes, got {attr!r}")
            value = f"o.{attr}"
            kind = type(field)
            if kind is fields.String:
                expr = f"(None if {value} is None else str({value}))"
            elif kind is fields.Dict and field.key_field is None and field.value_field is None:
                expr = value  # marshmallow copies the mapping; the encoder only reads it
            elif kind is fields.Integer and not field.as_string:
                expr = f"(None if {value} is None else int({value}))"
            elif kind is fields.Enum and field.by_value and type(field.field) is fields.Raw:
                expr = f"(None if {value} is None else {value}.value)"
            elif getattr(kind, "lean_isoformat", False):
                expr = f"(None if {value} is None else {value}.isoformat(timespec='microseconds'))"
            else:
                namespace[f"_f{index}"] = field._serialize
                expr = f"_f{index}({value}, {attr!r}, o)"
            items.append(f"{(field.data_key or name)!r}: {expr}")
        source = "def _dump(o):\n    return {" + ", ".join(items) + "}\n"
        exec(compile(source, f"<lean dump of {type(self).__name__}>", "exec"), namespace)
        self._lean_dump = namespace["_dump"]
        return self._lean_dump


class _NotLean(Exception):
    """The document needs marshmallow's own load: it has an error to report in full."""


class LeanLoadSchema(Schema):
    """A schema whose load of a valid document runs one generated function: the fields the
    document sets go through their own `deserialize` (types, validators, nested schemas),
    the ones it leaves out get their `load_default` directly, and the schema's `@validates`
    methods run as marshmallow runs them.

    Anything else takes marshmallow's own load, so every error report is marshmallow's:
    a document that is not a JSON object, an unknown key, a missing required field, a value
    a field or validator refuses. So does a call with `many`, `partial` or an `unknown`
    other than RAISE, and a schema with pre/post-load or schema-level hooks.
    """

    def load(self, data: Any, *, many: bool | None = None, partial: Any = None,
             unknown: str | None = None) -> Any:
        lean = self.__dict__.get("_lean_load")
        if lean is None:
            lean = self._compile_load()
        if (lean is False or many or self.many or partial or self.partial
                or (unknown or self.unknown) != RAISE or type(data) is not dict):
            return super().load(data, many=many, partial=partial, unknown=unknown)
        try:
            result = lean(data)
            for validator, data_key, attr in self._lean_validators:
                value = result.get(attr, missing)
                if value is not missing and validator(value, data_key=data_key) is missing:
                    raise _NotLean  # marshmallow would drop the field: let it
        except (_NotLean, ValidationError):
            return super().load(data, many=many, partial=partial, unknown=unknown)
        return result

    def _compile_load(self) -> Any:
        """Generate `_load(data)` for this schema, or False when it cannot have one."""
        hooks = self._hooks
        if hooks["pre_load"] or hooks["post_load"] or hooks["validates_schema"]:
            self._lean_load = False
            return False
        validators = self._field_validators()
        if validators is None:
            self._lean_load = False
            return False
        namespace: dict[str, Any] = {"missing": missing, "_NotLean": _NotLean}
        known: list[str] = []
        lines = ["def _load(data):",
                 "    if not data.keys() <= _known:",
                 "        raise _NotLean",
                 "    r = {}",
                 "    get = data.get"]
        for index, (name, field) in enumerate(self.load_fields.items()):
            key = field.data_key or name
            attr = field.attribute or name
            if "." in attr:  # marshmallow would nest the value: not worth a lean path
                self._lean_load = False
                return False
            known.append(key)
            namespace[f"_f{index}"] = field.deserialize
            lines += [f"    v = get({key!r}, missing)",
                      "    if v is not missing:",
                      f"        r[{attr!r}] = _f{index}(v, {key!r}, data)"]
            if field.required:
                lines += ["    else:", "        raise _NotLean"]
            elif field.load_default is not missing:
                namespace[f"_d{index}"] = field.load_default
                default = f"_d{index}()" if callable(field.load_default) else f"_d{index}"
                lines += ["    else:", f"        r[{attr!r}] = {default}"]
        lines.append("    return r")
        namespace["_known"] = frozenset(known)
        exec(compile("\n".join(lines) + "\n", f"<lean load of {type(self).__name__}>",
                     "exec"), namespace)
        self._lean_validators = validators
        self._lean_load = namespace["_load"]
        return self._lean_load

    def _field_validators(self) -> tuple[tuple[Any, str, str], ...] | None:
        """The `@validates` methods as (bound method, data key, attribute) for each field
        they name, in marshmallow's order: the calls its `_invoke_field_validators` makes
        for a valid document, without its error store. None when a method names a field
        the schema does not load (marshmallow's own load then says so, or skips it)."""
        found = []
        for attr_name, _, kwargs in self._hooks["validates"]:
            validator = getattr(self, attr_name)
            for field_name in kwargs["field_names"]:
                field = self.fields.get(field_name)
                if field is None:
                    return None
                data_key = field_name if field.data_key is None else field.data_key
                found.append((validator, data_key, field.attribute or field_name))
        return tuple(found)
