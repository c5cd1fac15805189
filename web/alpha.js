// A transparent session's picture is colour and alpha side by side in one video (colour left,
// the person's alpha as grey right; see models/compositor.py). Here they are put back together
// on a transparent canvas, so OBS shows the person over the scene with no chroma key.
// WebGL does it in a fragment shader; where WebGL is unavailable, a 2D canvas does it per pixel.
// Plain ES module: no build step, nothing from a CDN.

const VERTEX = `
attribute vec2 corner;
varying vec2 uv;
void main() {
  uv = vec2(corner.x * 0.5 + 0.5, 0.5 - corner.y * 0.5);
  gl_Position = vec4(corner, 0.0, 1.0);
}`;

// Colour from the left half, alpha from the right half, each kept half a texel off the seam so
// that linear filtering never mixes the two. The codec leaves a few levels of noise around
// edges (an alpha of 2/255 where the matte says 0): alpha is stretched from [0.02, 0.98] to
// [0, 1], so the scene stays untouched outside the person. Premultiplied, as canvases are.
const FRAGMENT = `
precision mediump float;
uniform sampler2D frame;
uniform float texel;
varying vec2 uv;
void main() {
  float x = clamp(uv.x * 0.5, 0.5 * texel, 0.5 - 0.5 * texel);
  vec3 colour = texture2D(frame, vec2(x, uv.y)).rgb;
  float alpha = clamp((texture2D(frame, vec2(x + 0.5, uv.y)).g - 0.02) / 0.96, 0.0, 1.0);
  gl_FragColor = vec4(colour * alpha, alpha);
}`;

function compile(gl, type, source) {
  const shader = gl.createShader(type);
  gl.shaderSource(shader, source);
  gl.compileShader(shader);
  if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(shader));
  return shader;
}

function webglPainter(canvas) {
  const gl = canvas.getContext("webgl", { alpha: true, premultipliedAlpha: true,
                                          preserveDrawingBuffer: true, antialias: false });
  if (!gl) return null;
  const program = gl.createProgram();
  gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, VERTEX));
  gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, FRAGMENT));
  gl.linkProgram(program);
  if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(gl.getProgramInfoLog(program));
  gl.useProgram(program);
  gl.bindBuffer(gl.ARRAY_BUFFER, gl.createBuffer());
  gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([-1, -1, 1, -1, -1, 1, 1, 1]), gl.STATIC_DRAW);
  const corner = gl.getAttribLocation(program, "corner");
  gl.enableVertexAttribArray(corner);
  gl.vertexAttribPointer(corner, 2, gl.FLOAT, false, 0, 0);
  gl.bindTexture(gl.TEXTURE_2D, gl.createTexture());
  for (const [key, value] of [[gl.TEXTURE_MIN_FILTER, gl.LINEAR], [gl.TEXTURE_MAG_FILTER, gl.LINEAR],
                              [gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE], [gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE]])
    gl.texParameteri(gl.TEXTURE_2D, key, value);
  const texel = gl.getUniformLocation(program, "texel");
  return (video) => {
    gl.viewport(0, 0, canvas.width, canvas.height);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, video);
    gl.uniform1f(texel, 1 / video.videoWidth);
    gl.clearColor(0, 0, 0, 0);
    gl.clear(gl.COLOR_BUFFER_BIT);
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
  };
}

function canvas2dPainter(canvas) {
  const ctx = canvas.getContext("2d");
  const scratch = document.createElement("canvas").getContext("2d", { willReadFrequently: true });
  return (video) => {
    const [w, h] = [canvas.width, canvas.height];
    scratch.canvas.width = 2 * w;
    scratch.canvas.height = h;
    scratch.drawImage(video, 0, 0, 2 * w, h);
    const both = scratch.getImageData(0, 0, 2 * w, h).data;
    const out = ctx.createImageData(w, h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = 4 * (y * w + x), j = 4 * (y * 2 * w + x), k = j + 4 * w;
        out.data[i] = both[j]; out.data[i + 1] = both[j + 1]; out.data[i + 2] = both[j + 2];
        out.data[i + 3] = Math.min(255, Math.max(0, (both[k + 1] - 5) / 0.96));
      }
    }
    ctx.putImageData(out, 0, 0);
  };
}

// Draw every new picture of `video` onto `canvas`, colour with its alpha. Returns { stop(), mode }.
export function composeAlpha(video, canvas) {
  let paint = null;
  let mode = "webgl";
  try { paint = webglPainter(canvas); } catch (err) { console.warn("WebGL:", err); }
  if (!paint) { paint = canvas2dPainter(canvas); mode = "2d"; }
  let running = true;
  const frame = () => {
    if (!running) return;
    if (video.readyState >= 2 && video.videoWidth >= 2) {
      const [w, h] = [video.videoWidth >> 1, video.videoHeight];
      if (canvas.width !== w || canvas.height !== h) [canvas.width, canvas.height] = [w, h];
      paint(video);
    }
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
  return { mode, stop() { running = false; } };
}

// True when the server put background=transparent in this page's URL (obs_url, view_url).
export function isTransparent(query) {
  return query.get("background") === "transparent";
}
