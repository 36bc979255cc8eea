"""AMI fixes: unique names, tags on RegisterImage/CopyImage, deprecation, data-plane hooks.

AWS behaviours followed (EC2 API reference):
- RegisterImage/CreateImage/CopyImage: an AMI name is unique per account and region; a taken
  name fails with InvalidAMIName.Duplicate. (moto allows duplicates.)
- RegisterImage.TagSpecifications: tags the AMI; any ResourceType other than `image` fails the
  request. (moto ignores them.)
- CopyImage.CopyImageTags: copies the user-defined tags (never `aws:` ones); TagSpecifications
  add tags to the copy (`image`) and to its new snapshots (`snapshot`), any other resource type
  fails the request. (moto drops all tags.) The copy, in any region, gets its own snapshot
  and the same root filesystem (the data plane shares the frozen layers, copy-on-write).
- EnableImageDeprecation(DeprecateAt): seconds are rounded to the nearest minute, a time in the
  past is refused, at most 10 years ahead; DisableImageDeprecation clears it; DescribeImages
  reports DeprecationTime. IncludeDeprecated: deprecated AMIs are left out unless asked for, but
  an owner always sees its own. (moto has none of this.)
- CreateImage of an EBS-backed instance makes an EBS-backed AMI (RootDeviceType "ebs") with the
  instance's root device name. (moto says "standard" and "/dev/sda1", so Packer refuses to build
  on such an image: "invalid root device type" — the app layer is built on a foundation made so.)
- ImdsSupport (RegisterImage, ModifyImageAttribute): the only value is "v2.0", and once set it
  cannot be undone; only the owner may set it. DescribeImages and DescribeImageAttribute
  (imdsSupport) report it. (moto ignores it, and DescribeImageAttribute imdsSupport crashes.)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from release.sandbox.patches._replace import replace
from release.sandbox.wire import RequestContext, WireError, iso_timestamp

MAX_DEPRECATION_AHEAD = timedelta(days=3652)


def _runtime() -> Any:
    from release.sandbox.patches import runtime

    return runtime()


def _ec2(ctx: RequestContext) -> Any:
    from moto.ec2.models import ec2_backends

    return ec2_backends[ctx.account_id][ctx.region]


def _check_name_free(backend: Any, name: str | None) -> None:
    from moto.ec2.exceptions import EC2ClientError

    if not name:
        return
    for ami in backend.amis.values():
        if ami.name == name and ami.owner_id == backend.account_id:
            raise EC2ClientError("InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI {ami.id}")


def _tags_by_type(tag_specifications: list[dict[str, Any]], allowed: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """TagSpecifications as {resource type: tags}; a type the operation cannot tag fails the request."""
    from moto.ec2.exceptions import EC2ClientError

    tags: dict[str, dict[str, str]] = {}
    for spec in tag_specifications:
        kind = spec.get("ResourceType")
        if kind not in allowed:
            raise EC2ClientError(
                "InvalidParameterValue", f"'{kind}' is not a valid taggable resource type for this operation."
            )
        for tag in spec.get("Tags", []):
            tags.setdefault(kind, {})[tag["Key"]] = tag.get("Value", "")
    return tags


def _image_tags(tag_specifications: list[dict[str, Any]]) -> dict[str, str]:
    return _tags_by_type(tag_specifications, ("image",)).get("image", {})


def _check_imds_value(value: object) -> None:
    from moto.ec2.exceptions import EC2ClientError

    if value != "v2.0":
        raise EC2ClientError("InvalidParameterValue", f"Value ({value}) for parameter imdsSupport is invalid. "
                                                      "The only supported value is v2.0.")


def _set_imds_support(ami: Any) -> None:
    ami.imds_support = "v2.0"  # moto's serializer renders Image.ImdsSupport from it
    ami.imds = "v2.0"  # what moto's DescribeImageAttribute(imdsSupport) reads


def is_deprecated(ami: Any, now: datetime) -> bool:
    moment = getattr(ami, "kiln_deprecate_at", None)
    return moment is not None and moment <= now


def apply() -> None:
    from moto.ec2.models.amis import AmiBackend
    from moto.ec2.responses.amis import AmisResponse

    original_register: Any = AmiBackend.register_image
    original_create: Any = AmiBackend.create_image
    original_copy: Any = AmiBackend.copy_image
    original_deregister: Any = AmiBackend.deregister_image

    def register_image(self: Any, name: str | None = None, description: str | None = None) -> Any:
        _check_name_free(self, name)
        return original_register(self, name, description)

    def create_image(self: Any, instance_id: str, name: str, description: str, tag_specifications: Any) -> Any:
        _check_name_free(self, name)
        ami = original_create(self, instance_id, name, description, tag_specifications)
        source = self.amis.get(getattr(self.get_instance(instance_id), "image_id", ""))
        if source is not None and source.root_device_type == "ebs":
            ami.root_device_type = "ebs"
            ami.root_device_name = source.root_device_name
        dataplane = _runtime().dataplane
        if dataplane is not None:
            dataplane.create_image(instance_id, ami.id)
        return ami

    def copy_image(
        self: Any, source_image_id: str, source_region: str, name: str | None = None, description: str | None = None
    ) -> Any:
        _check_name_free(self, name)
        ami = original_copy(self, source_image_id, source_region, name, description)
        dataplane = _runtime().dataplane
        if dataplane is not None:
            dataplane.copy_image(source_image_id, ami.id)
        return ami

    def deregister_image(self: Any, ami_id: str) -> None:
        original_deregister(self, ami_id)
        dataplane = _runtime().dataplane
        if dataplane is not None:
            dataplane.deregister_image(ami_id)

    original_modify_response: Any = AmisResponse.modify_image_attribute
    original_attribute_response: Any = AmisResponse.describe_image_attribute
    original_register_response: Any = AmisResponse.register_image
    original_copy_response: Any = AmisResponse.copy_image
    original_describe_response: Any = AmisResponse.describe_images

    def register_image_response(self: Any) -> Any:
        tags = _image_tags(self._get_param("TagSpecifications", []))  # validate before creating
        imds = self._get_param("ImdsSupport")
        if imds is not None:
            _check_imds_value(imds)
        result = original_register_response(self)
        if tags:
            self.ec2_backend.create_tags([result.result["ImageId"]], tags)
        if imds is not None:
            _set_imds_support(self.ec2_backend.amis[result.result["ImageId"]])
        return result

    def modify_image_attribute_response(self: Any) -> Any:
        imds = self._get_param("ImdsSupport")
        if imds is None:
            return original_modify_response(self)
        from moto.ec2.exceptions import EC2ClientError

        _check_imds_value(imds.get("Value") if isinstance(imds, dict) else imds)
        image_id = self._get_param("ImageId")
        ami = self.ec2_backend.amis.get(image_id)
        if ami is None:
            raise EC2ClientError("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
        if ami.owner_id != self.current_account:
            raise EC2ClientError("AuthFailure", f"Not authorized for image:{image_id}")
        _set_imds_support(ami)
        from moto.core.responses import EmptyResult

        return EmptyResult()

    def describe_image_attribute_response(self: Any) -> Any:
        if self._get_param("Attribute") == "imdsSupport":
            ami = self.ec2_backend.amis.get(self._get_param("ImageId"))
            if ami is not None and not hasattr(ami, "imds"):
                ami.imds = None  # moto reads this attribute and has none; AWS answers with no value
        return original_attribute_response(self)

    def copy_image_response(self: Any) -> Any:
        from moto.ec2.models import ec2_backends

        extra = _tags_by_type(self._get_param("TagSpecifications", []), ("image", "snapshot"))
        result = original_copy_response(self)
        image_id = result.result["ImageId"]
        tags: dict[str, str] = {}
        if self._get_bool_param("CopyImageTags", False):
            source_backend = ec2_backends[self.current_account][self._get_param("SourceRegion")]
            source_tags = source_backend.tags.get(self._get_param("SourceImageId"), {})
            tags.update({k: v for k, v in source_tags.items() if not k.startswith("aws:")})
        tags.update(extra.get("image", {}))
        if tags:
            self.ec2_backend.create_tags([image_id], tags)
        snapshot = getattr(self.ec2_backend.amis[image_id], "ebs_snapshot", None)
        if extra.get("snapshot") and snapshot is not None:
            self.ec2_backend.create_tags([snapshot.id], extra["snapshot"])
        return result

    def describe_images_response(self: Any) -> Any:
        result = original_describe_response(self)
        if self._get_bool_param("IncludeDeprecated", False):
            return result
        now = _runtime().clock.now()
        account = self.current_account
        images = result.result["Images"]
        result.result["Images"] = [i for i in images if i.owner_id == account or not is_deprecated(i, now)]
        return result

    replace(AmiBackend, "register_image", register_image)
    replace(AmiBackend, "create_image", create_image)
    replace(AmiBackend, "copy_image", copy_image)
    replace(AmiBackend, "deregister_image", deregister_image)
    replace(AmisResponse, "register_image", register_image_response)
    replace(AmisResponse, "modify_image_attribute", modify_image_attribute_response)
    replace(AmisResponse, "describe_image_attribute", describe_image_attribute_response)
    replace(AmisResponse, "copy_image", copy_image_response)
    replace(AmisResponse, "describe_images", describe_images_response)


def _owned_image(ctx: RequestContext, image_id: str) -> Any:
    backend = _ec2(ctx)
    ami = backend.amis.get(image_id)
    if ami is None:
        if image_id in backend.deleted_amis:
            raise WireError("InvalidAMIID.Unavailable", f"The image id '[{image_id}]' is no longer available")
        raise WireError("InvalidAMIID.NotFound", f"The image id '[{image_id}]' does not exist")
    if ami.owner_id != ctx.account_id:
        raise WireError("AuthFailure", f"Not authorized for image:{image_id}")
    return ami


def enable_image_deprecation(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    ami = _owned_image(ctx, params["ImageId"])
    at: datetime = params["DeprecateAt"].astimezone(UTC)
    at = (at + timedelta(seconds=30)).replace(second=0, microsecond=0)  # nearest minute
    now = _runtime().clock.now()
    if at <= now:
        raise WireError("InvalidParameterValue", "The deprecation time can't be in the past.")
    if at > now + MAX_DEPRECATION_AHEAD:
        raise WireError("InvalidParameterValue", "The deprecation time can't be more than 10 years from now.")
    ami.kiln_deprecate_at = at
    ami.deprecation_time = iso_timestamp(at)  # moto's serializer renders Image.DeprecationTime from it
    return {"Return": True}


def disable_image_deprecation(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    ami = _owned_image(ctx, params["ImageId"])
    ami.kiln_deprecate_at = None
    ami.deprecation_time = None
    return {"Return": True}
