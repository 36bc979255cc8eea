"""Launch template fixes: SourceVersion inheritance, stable version numbers, version deletion.

AWS (EC2 API reference, CreateLaunchTemplateVersion.SourceVersion): "the new version inherits
the launch parameters from the source version. If you specify additional launch parameters for
the new version, they overwrite any corresponding launch parameters inherited from the source
version." moto 5.2.5 ignores SourceVersion. Inheritance here is per top-level LaunchTemplateData
parameter (a given BlockDeviceMappings replaces the inherited list), as on AWS.

AWS (DeleteLaunchTemplateVersions): the default version cannot be deleted; the result lists the
versions deleted and, per version, why one was not. moto 5.2.5 lacks the operation, and stores
versions in a list indexed by number, so deleting one would renumber the rest. The patch looks
versions up by number and never reuses a number (the next version is always latest-ever + 1).
"""

from __future__ import annotations

import copy
from typing import Any

from release.sandbox.patches._replace import replace
from release.sandbox.wire import RequestContext, WireError

MAX_VERSIONS_PER_DELETE = 200


def _ec2(ctx: RequestContext) -> Any:
    from moto.ec2.models import ec2_backends

    return ec2_backends[ctx.account_id][ctx.region]


def apply() -> None:
    from moto.ec2.exceptions import InvalidLaunchTemplateVersionNotFound
    from moto.ec2.models.launch_templates import LaunchTemplate, LaunchTemplateBackend, LaunchTemplateVersion
    from moto.ec2.responses.launch_templates import LaunchTemplates
    from moto.ec2.utils import parse_user_data

    def create_version(self: Any, data: dict[str, Any], description: str) -> Any:
        number = getattr(self, "kiln_next_number", len(self.versions) + 1)
        self.kiln_next_number = number + 1
        version = LaunchTemplateVersion(self, number, data, description)
        self.versions.append(version)
        return version

    def get_version(self: Any, num: Any) -> Any:
        text = str(num).lower()
        if text == "$latest":
            return self.versions[-1]
        if text == "$default":
            return self.default_version()
        for version in self.versions:
            if str(version.number) == str(num):
                return version
        raise InvalidLaunchTemplateVersionNotFound(template_id=self.id, version=num)

    def default_version(self: Any) -> Any:
        return self.get_version(self.default_version_number)

    original_describe: Any = LaunchTemplateBackend.describe_launch_template_versions

    def describe_launch_template_versions(
        self: Any,
        template_name: str,
        template_id: str,
        versions: list[str],
        min_version: int | None,
        max_version: int | None,
        max_results: int,
    ) -> Any:
        """MinVersion/MaxVersion are version numbers (inclusive), not list positions."""
        if versions or (min_version is None and max_version is None) or not (template_name or template_id):
            return original_describe(self, template_name, template_id, versions, min_version, max_version, max_results)
        every = original_describe(self, template_name, template_id, [], None, None, 10**9)
        low, high = min_version or 1, max_version or 10**9
        return [(t, v) for t, v in every if low <= v.number <= high][:max_results]

    original_create: Any = LaunchTemplates.create_launch_template_version

    def create_launch_template_version(self: Any) -> Any:
        """Serve SourceVersion by handing moto the merged LaunchTemplateData."""
        given = self._get_param("LaunchTemplateData", {})
        if given.get("UserData") is not None:
            given["UserData"] = parse_user_data(given["UserData"])
        source = self._get_param("SourceVersion")
        merged = given
        if source is not None:
            name, template_id = self._get_param("LaunchTemplateName"), self._get_param("LaunchTemplateId")
            template = (
                self.ec2_backend.get_launch_template(template_id)
                if template_id
                else self.ec2_backend.get_launch_template_by_name(name)
            )
            merged = copy.deepcopy(template.get_version(source).data)
            merged.update(given)
        moto_get_param = self._get_param

        def get_param(param_name: str, if_none: Any = None) -> Any:
            if param_name == "LaunchTemplateData":
                return merged
            return moto_get_param(param_name, if_none)

        self._get_param = get_param
        try:
            return original_create(self)
        finally:
            del self._get_param

    replace(LaunchTemplate, "create_version", create_version)
    replace(LaunchTemplate, "get_version", get_version)
    replace(LaunchTemplate, "default_version", default_version)
    replace(LaunchTemplateBackend, "describe_launch_template_versions", describe_launch_template_versions)
    replace(LaunchTemplates, "create_launch_template_version", create_launch_template_version)


def delete_launch_template_versions(ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    backend = _ec2(ctx)
    versions: list[str] = params.get("Versions", [])
    if len(versions) > MAX_VERSIONS_PER_DELETE:
        raise WireError(
            "InvalidParameterValue",
            f"You can delete up to {MAX_VERSIONS_PER_DELETE} launch template versions in a single request.",
        )
    template_id, name = params.get("LaunchTemplateId"), params.get("LaunchTemplateName")
    if bool(template_id) == bool(name):
        raise WireError("MissingParameter", "Specify either a launch template ID or a launch template name.")
    if template_id:
        template = backend.launch_templates.get(template_id)
        missing = ("launchTemplateIdDoesNotExist", f"The launch template ID '{template_id}' does not exist")
    else:
        found = backend.launch_template_name_to_ids.get(name)
        template = backend.launch_templates.get(found) if found else None
        missing = ("launchTemplateNameDoesNotExist", f"The launch template name '{name}' does not exist")

    deleted: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []

    def failure(version: str, code: str, message: str) -> None:
        item: dict[str, Any] = {"ResponseError": {"Code": code, "Message": message}}
        item["LaunchTemplateId"] = template.id if template else template_id
        item["LaunchTemplateName"] = template.name if template else name
        if version.isdigit():
            item["VersionNumber"] = int(version)
        failed.append(item)

    for version in versions:
        if template is None:
            failure(version, *missing)
            continue
        match = next((v for v in template.versions if str(v.number) == version), None)
        if match is None:
            failure(
                version, "launchTemplateVersionDoesNotExist", f"The launch template version {version} does not exist"
            )
        elif match.number == template.default_version_number:
            failure(
                version,
                "unexpectedError",
                "Cannot delete the default version of a launch template; set another version as the default first",
            )
        else:
            template.versions.remove(match)
            deleted.append(
                {"LaunchTemplateId": template.id, "LaunchTemplateName": template.name, "VersionNumber": match.number}
            )
    return {
        "SuccessfullyDeletedLaunchTemplateVersions": deleted,
        "UnsuccessfullyDeletedLaunchTemplateVersions": failed,
    }
