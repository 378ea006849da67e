"""Reactions: the set of them, and reacting to a comment (or taking it back)."""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from msgspec import Meta

from livecomments.comment_service.api.context import (
    COMMENTS,
    REACTIONS,
    SETTINGS,
    caller,
    json_response,
    limit,
)
from livecomments.comment_service.api.params import COMMENT, VIDEO, Param
from livecomments.comment_service.api.route import Ok, Route, install
from livecomments.comment_service.api.schema import Id, Model, ReactionCounts, ReactionName
from livecomments.comment_service.reactions import EMOJI
from livecomments.kernel import events
from livecomments.kernel.errors import Forbidden, ValidationError


class Reaction(Model):
    name: ReactionName
    emoji: str


class ReactionSet(Model):
    reactions: list[Reaction]


class ReactionResult(Model):
    comment_id: Id
    reaction: ReactionName
    reacted: Annotated[bool, Meta(description="True for PUT, false for DELETE.")]
    changed: Annotated[
        bool, Meta(description="False when the caller had already (not) reacted so.")
    ]
    reactions: ReactionCounts


class ReactionPath(Param):
    def __init__(self) -> None:
        super().__init__("reaction", "path", ReactionName, "Which reaction.")

    def __call__(self, request: web.Request) -> str:
        name = request.match_info[self.name]
        if name not in EMOJI:
            raise ValidationError(
                f"reactions are: {', '.join(EMOJI)}",
                code="invalid_reaction",
                details={"allowed": list(EMOJI)},
            )
        return name


REACTION = ReactionPath()
REACTION_SET = ReactionSet(reactions=[Reaction(name=k, emoji=v) for k, v in EMOJI.items()])


async def reaction_set(request: web.Request) -> web.Response:
    return json_response(REACTION_SET)


async def react(request: web.Request) -> web.Response:
    video_id, comment_id, name = VIDEO(request), COMMENT(request), REACTION(request)
    principal = await caller(request)
    await limit(
        request,
        "reactions",
        (f"react-user:{principal.user_id}", request.app[SETTINGS].react_limit_user),
    )
    doc = await request.app[COMMENTS].get(video_id, comment_id)
    if doc.get("status") == events.STATUS_DELETED:
        raise Forbidden("the comment was deleted", code="comment_deleted", status=409)
    add = request.method == "PUT"
    changed, counts = await request.app[REACTIONS].react(principal.user_id, doc, name, add)
    result = ReactionResult(
        comment_id=str(comment_id), reaction=name, reacted=add, changed=changed, reactions=counts
    )
    return json_response(result)


ROUTES = (
    Route(
        "GET",
        "/api/reactions",
        reaction_set,
        "The reaction set",
        "reactions",
        (Ok(200, "Reaction names and their emoji.", ReactionSet),),
    ),
    *(
        Route(
            method,
            "/api/videos/{video_id}/comments/{comment_id}/reactions/{reaction}",
            react,
            summary,
            "reactions",
            (Ok(200, "The comment's new totals.", ReactionResult),),
            notes=("Each user counts once per comment and reaction; repeating is a no-op.",),
            role="viewer",
            rates=(("react_limit_user", "user"),),
            params=(VIDEO, COMMENT, REACTION),
            errors={
                400: ("invalid_reaction",),
                404: ("comment_not_found",),
                409: ("comment_deleted",),
            },
        )
        for method, summary in (("PUT", "React to a comment"), ("DELETE", "Take it back"))
    ),
)


def add_routes(app: web.Application) -> None:
    install(app, ROUTES)
