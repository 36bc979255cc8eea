"""Launch template fixes: SourceVersion inheritance, stable version numbers, version deletion,
paging of DescribeLaunchTemplateVersions/DescribeLaunchTemplates, ClientToken idempotency.

AWS (EC2 API reference, CreateLaunchTemplateVersion.SourceVersion): "the new version inherits
the launch parameters from the source version. If you specify additional launch parameters for
the new version, they overwrite any corresponding launch parameters inherited from the source
version." moto 5.2.5 ignores SourceVersion. Inheritance here is per top-level LaunchTemplateData
parameter (a given BlockDeviceMappings replaces the inherited list), as on AWS.

AWS (DeleteLaunchTemplateVersions): the default version cannot be deleted; the result lists the
versions deleted and, per version, why one was not. moto 5.2.5 lacks the operation, and stores
versions in a list indexed by number, so deleting one would renumber the rest. The patch looks
versions up by number and never reuses a number (the next version is always latest-ever + 1).

AWS (DescribeLaunchTemplateVersions, DescribeLaunchTemplates): MaxResults is 1–200, and NextToken
is null only "when there are no more results to return". moto 5.2.5 cuts the list at MaxResults
(15 when none is given) and never issues a NextToken, so a paginator silently stops at 15. The
patch lists everything moto finds and hands it out in pages (release/sandbox/paging.py): 200 a
page when MaxResults is omitted, a NextToken whenever items remain.

AWS (CreateLaunchTemplateVersion.ClientToken, "Ensuring idempotency"): at most 128 ASCII
characters; a retry with the same token and the same parameters returns the original result
without creating anything; the same token with other parameters is IdempotentParameterMismatch.
Tokens are per account and region. moto ignores ClientToken.
"""

from __future__ import annotations

import copy
from typing import Any

from release.sandbox.paging import PageTokenError, page_size, paginate, query_of
from release.sandbox.patches._replace import replace
from release.sandbox.wire import RequestContext, WireError

MAX_VERSIONS_PER_DELETE = 200
MAX_RESULTS = 200  # DescribeLaunchTemplateVersions / DescribeLaunchTemplates: 1–200 a page
DEFAULT_PAGE = 200  # what AWS hands out when MaxResults is omitted (docs/sandbox.md)
EVERYTHING = 10**9
MAX_CLIENT_TOKEN = 128


def _ec2_error(code: str, message: str) -> Exception:
    from moto.ec2.exceptions import EC2ClientError

    return EC2ClientError(code, message)


def _query(response: Any) -> dict[str, Any]:
    """The request's flat parameters, as sent (one value each)."""
    return {k: v[0] if isinstance(v, list) and len(v) == 1 else v for k, v in response.querystring.items()}


def _listed_in_full(response: Any, original: Any) -> list[dict[str, Any]]:
    """What moto's `original` response lists when it is not told to stop at MaxResults."""
    moto_get_int_param = response._get_int_param

    def get_int_param(param_name: str, if_none: Any = None) -> Any:
        if param_name == "MaxResults":
            return EVERYTHING
        return moto_get_int_param(param_name, if_none)

    response._get_int_param = get_int_param
    try:
        result = original(response)
    finally:
        del response._get_int_param
    listed: dict[str, list[dict[str, Any]]] = result.result
    return next(iter(listed.values()))


def _page_of(response: Any, operation: str, items: list[dict[str, Any]], key: Any) -> Any:
    from moto.core.responses import ActionResult

    params = _query(response)
    size = page_size(
        params.get("MaxResults"),
        default=DEFAULT_PAGE,
        low=1,
        high=MAX_RESULTS,
        invalid=lambda message: _ec2_error("InvalidParameterValue", message),
    )
    try:
        page = paginate(items, key=key, size=size, token=params.get("NextToken"), query=query_of(operation, params))
    except PageTokenError:
        raise _ec2_error(
            "InvalidPaginationToken", "The specified pagination token is not valid or is expired."
        ) from None
    result: dict[str, Any] = {operation.removeprefix("Describe"): page.items}
    if page.next_token:
        result["NextToken"] = page.next_token
    return ActionResult(result)


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

    original_versions_response: Any = LaunchTemplates.describe_launch_template_versions

    def describe_launch_template_versions_paged(self: Any) -> Any:
        """Every version moto finds, in pages: by version number for one template's versions,
        else (named versions, or $Latest/$Default of every template) in the order asked."""
        listed = _listed_in_full(self, original_versions_response)
        params = _query(self)
        one_template = (params.get("LaunchTemplateName") or params.get("LaunchTemplateId")) and not any(
            k.startswith("LaunchTemplateVersion.") for k in params
        )
        if one_template:
            return _page_of(self, "DescribeLaunchTemplateVersions", listed, lambda v: (int(v["VersionNumber"]),))
        position = {id(v): n for n, v in enumerate(listed)}
        return _page_of(self, "DescribeLaunchTemplateVersions", listed, lambda v: (position[id(v)],))

    original_templates_response: Any = LaunchTemplates.describe_launch_templates

    def describe_launch_templates_paged(self: Any) -> Any:
        """Every template moto finds, in pages, oldest first."""
        listed = _listed_in_full(self, original_templates_response)
        return _page_of(
            self, "DescribeLaunchTemplates", listed, lambda t: (str(t["CreateTime"]), str(t["LaunchTemplateId"]))
        )

    original_create: Any = LaunchTemplates.create_launch_template_version

    def create_launch_template_version(self: Any) -> Any:
        """ClientToken idempotency around `create_from_source`."""
        from moto.core.responses import ActionResult

        token = self._get_param("ClientToken")
        if token is None:
            return create_from_source(self)
        if not token or len(token) > MAX_CLIENT_TOKEN or not token.isascii():
            raise _ec2_error(
                "InvalidParameterValue",
                f"Value ({token}) for parameter clientToken is invalid. "
                f"A client token is 1 to {MAX_CLIENT_TOKEN} ASCII characters.",
            )
        backend = self.ec2_backend
        seen: dict[str, tuple[str, Any]] = backend.__dict__.setdefault("kiln_version_client_tokens", {})
        request = query_of("CreateLaunchTemplateVersion", {k: v for k, v in _query(self).items() if k != "ClientToken"})
        if token in seen:
            first_request, first_result = seen[token]
            if first_request != request:
                raise _ec2_error(
                    "IdempotentParameterMismatch",
                    f"The client token '{token}' was already used with different parameters. "
                    "Use a new client token, or repeat the earlier request unchanged.",
                )
            return ActionResult(copy.deepcopy(first_result))
        created = create_from_source(self)
        seen[token] = (request, copy.deepcopy(created.result))
        return created

    def create_from_source(self: Any) -> Any:
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
    replace(LaunchTemplates, "describe_launch_template_versions", describe_launch_template_versions_paged)
    replace(LaunchTemplates, "describe_launch_templates", describe_launch_templates_paged)


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
